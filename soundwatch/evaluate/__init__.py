"""Evaluation lines: scene (event) metrics over annotated recordings."""
