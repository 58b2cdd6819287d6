"""The offline line: datasets, augmentations, losses, the training loop, cross-validation, reports."""
