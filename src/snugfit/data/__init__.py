"""snugfit.data."""
