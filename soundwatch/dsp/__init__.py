"""Signal processing: the log-mel frontend and the training augmentations."""
