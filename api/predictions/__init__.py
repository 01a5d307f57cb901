"""Predictions: the champion models' probabilities through the BentoML service."""
