"""herbid: identify plant species from herbarium sheet images with deep learning."""

__version__ = "0.1.0"
