"""snugfit.saving."""
