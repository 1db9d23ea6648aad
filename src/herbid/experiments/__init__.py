"""The paper's experiments by name (``I.H255.H255``, ``H1K_I.H255.H255``): grammar,
dataset aliases, cached multi-stage training, cross-validation and results tables."""

from herbid.experiments.spec import ExperimentSpec, SpecError, describe_chain, parse_spec

__all__ = ["ExperimentSpec", "SpecError", "describe_chain", "parse_spec"]
