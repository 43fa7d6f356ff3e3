"""Scaling study: how validation loss falls with model size and training-set size."""
