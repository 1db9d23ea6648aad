"""Training: typed configs and recipes, the loop, checkpoints, bundles."""
