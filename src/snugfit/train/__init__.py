"""Training: the Learner and its loop, the training calls and recipes, lr_find, resuming,
planning, the non-finite guard, Ctrl-C, precomputed features, optimizers, schedules.

Owns a training run's state (the Learner) and the order of its steps. May import
everything below it: ``snugfit.data``, ``models``, ``memory``, ``tasks``, ``infer``,
``saving``, ``callbacks``, ``events``, ``errors``, ``distributed``; never ``snugfit.app``.
"""
