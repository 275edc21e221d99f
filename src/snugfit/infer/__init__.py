"""Inference: evaluation over a loader, prediction of images and folders (into a CSV),
test-time augmentation, and what a classifier gets wrong (interpretation).

Owns forward passes without a graph and what is read from them. May import
``snugfit.data`` (decoding, datasets), ``snugfit.memory`` (batch sizing, OOM),
``snugfit.tasks``, ``snugfit.errors`` and ``snugfit.distributed``; it works on a
learner only through its public methods, and never imports ``snugfit.train``.
"""
