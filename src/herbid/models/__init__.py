"""Models: the paper's GoogLeNet-BN-PReLU, EfficientNet-Lite and any timm model, one contract."""

from herbid.models.base import HerbidModel, InitRecord, Preprocessing
from herbid.models.registry import MODELS, WeightsUnavailable, create_model, list_models, register_model

__all__ = ["MODELS", "HerbidModel", "InitRecord", "Preprocessing", "WeightsUnavailable", "create_model",
           "list_models", "register_model"]
