"""Accuracy of a model on dataset rows: metrics, ``herbid evaluate``, frozen-feature baselines."""

from herbid.evaluation.metrics import accuracy_from_logits, evaluate_model, topk_correct

__all__ = ["accuracy_from_logits", "evaluate_model", "topk_correct"]
