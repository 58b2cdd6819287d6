"""Data made for evaluation and training beyond ESC-50: the background corpus and the soundscape mixer."""
