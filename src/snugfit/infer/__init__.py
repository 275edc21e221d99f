"""snugfit.infer."""
