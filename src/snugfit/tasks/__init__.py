"""snugfit.tasks."""
