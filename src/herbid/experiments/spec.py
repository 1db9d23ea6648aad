"""The paper's experiment names, ``<Initialization>.<Training>.<Testing>``, as data.

Carranza-Rojas et al. 2017 name every experiment after what initialised the network,
what it was fine-tuned on and what it was tested on: ``I.H255.H255`` is ImageNet
weights fine-tuned on Herbarium255's training set and tested on its test set. A dataset
acronym as initialisation (``H1K.H255.H255``) means "pre-trained on that dataset from
random weights", and the paper's subscript I (``H1K_I``, printed H1K\\ :sub:`I`) means
"from ImageNet, then that dataset". Here the subscript is written with ``_`` and chains
may be longer, read right to left like the subscript: ``A_B_I`` is ImageNet → B → A.

Grammar (aliases are letters, digits and hyphens; ``R`` and ``I`` are reserved)::

    spec   := init "." alias "." alias
    init   := "R" | "I" | chain
    chain  := alias ("_" alias)* ("_" ("R" | "I"))?     # no base = "_R"

Only the syntax lives here; whether the aliases exist and whether a training set and a
different test set share their species is checked against ``datasets.toml`` by the
runner, before anything is trained.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from herbid.errors import UserError

RANDOM, IMAGENET = "R", "I"
#: The two initialisations that are not datasets, and how tables print them.
BASES: dict[str, str] = {RANDOM: "Random", IMAGENET: "ImageNet"}
#: What a base means as ``TrainConfig.init``.
BASE_INIT: dict[str, str] = {RANDOM: "random", IMAGENET: "imagenet"}

ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
ALIAS_RULE = "letters, digits and hyphens, starting with a letter or digit (no '.' or '_')"


class SpecError(UserError, ValueError):
    """A malformed experiment name; the message says what is wrong and shows the grammar."""


@dataclass(frozen=True)
class ExperimentSpec:
    """One parsed experiment.

    ``init_chain`` is the initialisation oldest first: a base (``"R"`` or ``"I"``) then
    the datasets pre-trained on in order, e.g. ``["I", "H1K"]`` for ``H1K_I``. The final
    fine-tuning on ``train`` is not part of it.
    """

    init_chain: tuple[str, ...]
    train: str
    test: str

    @property
    def base(self) -> str:
        return self.init_chain[0]

    @property
    def pretraining(self) -> tuple[str, ...]:
        """The datasets trained on before ``train``, oldest first."""
        return self.init_chain[1:]

    @property
    def stages(self) -> tuple[str, ...]:
        """Every dataset trained on, oldest first, ending with ``train``."""
        return (*self.pretraining, self.train)

    @property
    def aliases(self) -> tuple[str, ...]:
        """Every dataset alias the experiment needs, without repeats, in order of use."""
        return tuple(dict.fromkeys((*self.stages, self.test)))

    @property
    def init_text(self) -> str:
        """The initialisation in the paper's notation (``H1K_I``, ``R``, ``H255``)."""
        return format_chain(self.init_chain)

    @property
    def name(self) -> str:
        """The canonical name: ``H1K_R.H255.H255`` is written ``H1K.H255.H255``."""
        return f"{self.init_text}.{self.train}.{self.test}"

    def __str__(self) -> str:
        return self.name


def format_chain(chain: tuple[str, ...] | list[str]) -> str:
    """``("I", "B", "A")`` → ``"A_B_I"``; a random base is implied when datasets follow it."""
    base, *datasets = chain
    if not datasets:
        return base
    parts = list(reversed(datasets)) + ([base] if base != RANDOM else [])
    return "_".join(parts)


def describe_chain(chain: tuple[str, ...] | list[str], names: dict[str, str] | None = None, *,
                   show_random: bool = False) -> str:
    """Human text for a chain, as the paper's Initialization column: ``ImageNet → NY``.

    A random start followed by datasets is left out unless ``show_random`` (the paper
    prints H1K.H255.H255's initialisation as just "Herbarium1K"). ``names`` maps aliases
    to display names.
    """
    names = names or {}
    base, *datasets = chain
    words = [names.get(alias, alias) for alias in datasets]
    if base != RANDOM or not words or show_random:
        words.insert(0, BASES[base])
    return " → ".join(words)


def parse_spec(text: str) -> ExperimentSpec:
    """Parse ``<Initialization>.<Training>.<Testing>``; :class:`SpecError` if malformed."""
    raw = text.strip()
    parts = raw.split(".")
    if len(parts) != 3:
        raise SpecError(_explain(raw, f"expected 3 parts separated by '.', found {len(parts)}"))
    init, train, test = parts
    for role, alias in (("training", train), ("testing", test)):
        _check_alias(raw, alias, role)
    return ExperimentSpec(init_chain=_parse_chain(raw, init), train=train, test=test)


def parse_specs(texts: list[str]) -> list[ExperimentSpec]:
    """Parse several names, dropping repeats (same canonical name) but keeping order."""
    unique: dict[str, ExperimentSpec] = {}
    for text in texts:
        spec = parse_spec(text)
        unique.setdefault(spec.name, spec)
    return list(unique.values())


def _parse_chain(raw: str, init: str) -> tuple[str, ...]:
    """``"A_B_I"`` → ``("I", "B", "A")``: the subscript notation read right to left."""
    if not init:
        raise SpecError(_explain(raw, "the initialization part is empty"))
    items = init.split("_")
    *datasets, last = items
    if last in BASES:
        base = last
    else:
        base, datasets = RANDOM, items
    for alias in datasets:
        if alias in BASES:
            raise SpecError(_explain(raw, f"{alias!r} ({BASES[alias]}) can only end an initialization chain"))
        _check_alias(raw, alias, "initialization")
    return (base, *reversed(datasets))


def _check_alias(raw: str, alias: str, role: str) -> None:
    if not alias:
        raise SpecError(_explain(raw, f"the {role} dataset is empty"))
    if role != "initialization" and alias in BASES:
        raise SpecError(_explain(raw, f"{alias!r} ({BASES[alias]}) is an initialization, not a {role} dataset"))
    if not ALIAS_PATTERN.match(alias):
        raise SpecError(_explain(raw, f"bad dataset alias {alias!r}: use {ALIAS_RULE}"))


def _explain(raw: str, problem: str) -> str:
    return (f"experiment {raw!r}: {problem}; expected <Initialization>.<Training>.<Testing> "
            "such as R.H255.H255, I.H1K.H1K or H1K_I.H255.H255")
