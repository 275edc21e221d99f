"""snugfit.train."""
