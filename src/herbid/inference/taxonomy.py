"""Genus and family probabilities from species probabilities.

A genus whose species share 0.35 + 0.35 is a better answer than any one of them, so a
higher rank's probability is the sum of its species' probabilities. ``identify`` suggests
names with it and ``evaluate`` scores genus/family top-1 with it: one rule, one matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

#: The ranks above species that herbid reports.
RANKS = ("genus", "family")


@dataclass
class RankIndex:
    """Sums species probabilities per taxon of one rank with one matrix product.

    ``membership[i, j] = 1`` when species ``i`` belongs to taxon ``j``; species without
    the rank belong to no taxon (their probability counts for none).
    """

    taxa: list[str]
    membership: torch.Tensor = field(repr=False)

    @classmethod
    def build(cls, species: Sequence[str], taxonomy: dict[str, dict[str, str | None]], rank: str) -> "RankIndex | None":
        of_species = [(taxonomy.get(name) or {}).get(rank) for name in species]
        taxa = sorted({taxon for taxon in of_species if taxon})
        if not taxa:
            return None
        column = {taxon: j for j, taxon in enumerate(taxa)}
        membership = torch.zeros(len(species), len(taxa))
        for i, taxon in enumerate(of_species):
            if taxon:
                membership[i, column[taxon]] = 1.0
        return cls(taxa, membership)

    def sums(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(B, n_species) → (B, n_taxa) summed probabilities."""
        return probabilities.to(self.membership.dtype) @ self.membership
