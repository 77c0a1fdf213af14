"""Typed, frozen configs for the model and every pipeline."""
