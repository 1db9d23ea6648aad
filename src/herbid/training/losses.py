"""Losses: species cross-entropy, optionally with the taxonomy as a class hierarchy.

``HierarchicalLoss`` adds, for every rank whose names are known for all species (genus,
family), the cross-entropy of the rank *implied by the species probabilities*:
``p(genus g) = Σ_{species s in g} p(s)``. No extra heads are needed, so every model and
bundle stays a plain species classifier; the extra terms reward a wrong species in the
right genus over one in the wrong genus (the multi-level idea of the Herbarium 2022
winners, as a marginal loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RANKS = ("genus", "family")


def rank_groups(species: list[str], taxonomy: dict[str, dict[str, str | None]], rank: str) -> torch.Tensor | None:
    """Group index of every species at ``rank``, or None when the rank cannot help:
    unknown for some species, or the same for all of them."""
    names = [taxonomy.get(s, {}).get(rank) for s in species]
    if any(n is None for n in names) or len(set(names)) < 2:
        return None
    order = sorted(set(names))
    return torch.tensor([order.index(n) for n in names], dtype=torch.long)


class HierarchicalLoss(nn.Module):
    """``CE(species) + weight · Σ_ranks CE(rank marginal)`` (label smoothing on species).

    With ``weight=0`` it is plain cross-entropy. ``sample_weights`` (one per sample) make
    the batch loss a weighted mean.
    """

    def __init__(self, species: list[str], taxonomy: dict[str, dict[str, str | None]], *, weight: float,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.weight = weight
        self.label_smoothing = label_smoothing
        self.ranks: list[str] = []
        for rank in RANKS if weight > 0 else ():
            groups = rank_groups(species, taxonomy, rank)
            if groups is not None:
                self.ranks.append(rank)
                self.register_buffer(f"{rank}_of_species", groups)
                # (n_species, n_groups): 0 where the species is in the group, −inf elsewhere,
                # so logsumexp over species gives log Σ_{s in g} p(s)
                member = groups.unsqueeze(1) == torch.arange(int(groups.max()) + 1).unsqueeze(0)
                self.register_buffer(f"{rank}_log_mask", torch.zeros(member.shape).masked_fill(~member, float("-inf")))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        # without weights: torch's own mean reduction, bit-identical to earlier runs
        reduction = "mean" if sample_weights is None else "none"
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing, reduction=reduction)
        if self.ranks:
            log_probs = F.log_softmax(logits.float(), dim=1)
            for rank in self.ranks:
                groups, log_mask = getattr(self, f"{rank}_of_species"), getattr(self, f"{rank}_log_mask")
                group_log_probs = torch.logsumexp(log_probs.unsqueeze(2) + log_mask.unsqueeze(0), dim=1)
                loss = loss + self.weight * F.nll_loss(group_log_probs, groups[targets], reduction=reduction)
        if sample_weights is None:
            return loss
        sample_weights = sample_weights.to(loss)
        return (loss * sample_weights).sum() / sample_weights.sum().clamp_min(1e-12)


def make_criterion(species: list[str], taxonomy: dict[str, dict[str, str | None]], *, label_smoothing: float,
                   taxonomy_weight: float) -> nn.Module:
    """The species loss: cross-entropy, with the rank terms when ``taxonomy_weight`` > 0."""
    return HierarchicalLoss(species, taxonomy, weight=taxonomy_weight, label_smoothing=label_smoothing)
