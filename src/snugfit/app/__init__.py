"""snugfit.app."""
