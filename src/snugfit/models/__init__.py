"""snugfit.models."""
