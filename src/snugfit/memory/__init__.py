"""snugfit.memory."""
