"""Evaluation: exact top-k accuracy and loss, also under data parallelism."""

from herbid.evaluation.metrics import accuracy_from_logits, evaluate_model, predict_logits, topk_correct

__all__ = ["accuracy_from_logits", "evaluate_model", "predict_logits", "topk_correct"]
