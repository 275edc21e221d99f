"""Evaluation and prediction through a learner (the work is `snugfit.infer`'s).

`Predicting` is the part of `snugfit.train.learner.Learner` that knows what the
model predicts (its classes, preprocessing, task, and what a saved model needs:
``infer_config``, ``model_spec``) and runs it without a graph: `eval_outputs`
(chunks halved on out-of-memory, through ``set_memory``), validation,
``get_preds``, ``predict`` and test-time augmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from snugfit import distributed, models
from snugfit.data.device_loader import DeviceLoader
from snugfit.data.preprocessing import Preprocessing
from snugfit.errors import SnugfitError, first_line
from snugfit.infer import evaluate, tta
from snugfit.memory.oom import is_oom, release_memory
from snugfit.tasks import MultiLabel, SingleLabel, Task, task_from_config
from snugfit.train import head_solve
from snugfit.train.precompute import feature_loaders, stored_valid_features

log = logging.getLogger("snugfit")
SHIFT_IMAGES = 32  # measured with 4 to 64: fewer images read a larger shift


class Predicting:
    """Forward passes without a graph, and what a prediction needs to know (see the
    module docstring)."""

    @property
    def vocab(self) -> list[str]:
        """The class names: the data's, or the saved model's."""
        return list(self.dls.vocab if self.dls is not None else self._infer["vocab"])

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become inputs: the data's now, or the saved model's."""
        if self.dls is None:
            return Preprocessing.from_config(self._infer)
        return preprocessing_of(self.dls)

    @property
    def infer_config(self) -> dict:
        """What predicting needs without training data (and what `save` writes): the
        classes, the image transform and the task's settings."""
        return {"vocab": self.vocab, **self.preprocessing.to_config(), **self.task.config()}

    @property
    def model_spec(self) -> dict:
        """What a saved model needs to rebuild the network: ``arch`` (and ``decoder``)."""
        return models.spec(self.model, self.arch)

    @property
    def can_precompute(self) -> bool:
        """Whether the head can train alone on precomputed features: a classifier's
        head can; a segmentation decoder, which needs the encoder's skip features,
        cannot (and not under torchrun, which shards images)."""
        return models.has_classifier(self.model) and not self.distributed

    @property
    def can_solve_head(self) -> bool:
        """Whether `solve_head` applies: precomputed features and a head that is one
        Linear layer (`snugfit.train.head_solve`)."""
        return self.can_precompute and head_solve.solvable(self.model.get_classifier())

    def features_in_memory(self) -> bool:
        """Whether the training images' stored features (computed now if needed) are
        held in memory, not memory-mapped from disk (`precompute.IN_MEMORY_LIMIT`):
        the solver holds them all at once, on the model's device."""
        feats, _ = self.precompute_features()
        return isinstance(feats, torch.Tensor)

    @property
    def multi_label(self) -> bool:
        return self.task.multi_label

    @property
    def threshold(self) -> float:
        """Multi-label: `predict` returns the classes whose probability is above it
        (saved with the model)."""
        return getattr(self.task, "threshold", 0.5)

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not self.task.multi_label:
            raise SnugfitError("threshold: only multi-label models decide by a threshold")
        self.task = self.task.with_threshold(value)

    def eval_outputs(
        self, xb: torch.Tensor, precision: str | None = None, net: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """Outputs (float32) of a batch without a graph, in chunks of ``eval_bs``;
        halved on out-of-memory (and kept halved). ``precision``: this batch's, if
        not the learner's; ``net``: the module to run, if not the learner's (an
        inference copy of it, `snugfit.models.fold_batchnorm`)."""
        x = self.prepare_input(xb)
        net = self.net if net is None else net
        while True:
            chunk = min(self.memory.eval_bs or len(x), len(x))
            try:
                with self.autocast(precision):
                    return torch.cat([net(c).float() for c in x.split(chunk)])
            except Exception as e:
                if not (self.oom_recovery and is_oom(e)) or chunk == 1:
                    raise
                message = first_line(e)
            release_memory(self.device)
            self.set_memory("out of memory in evaluation", eval_bs=chunk // 2)
            self.events.emit("oom", phase="eval", **{"from": chunk, "to": chunk // 2},
                             error=message)  # fmt: skip
            log.warning(f"out of memory in evaluation ({message}): chunks of {chunk // 2}")

    @property
    def oom_events(self) -> list[dict]:
        """The out-of-memory events so far (from `events`)."""
        return self.events.of("oom")

    def get_preds(self, dl=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw outputs and targets over a loader (the validation set by default: from
        its stored features while the body is frozen, as `evaluate_valid`); a loader
        of images is read as the model expects them (`model_loader`)."""
        if self.dls is not None and (dl is None or dl is self.dls.valid):
            return self._on_valid(lambda d: evaluate.get_preds(self, d), self.dls.valid)
        return evaluate.get_preds(self, self.model_loader(dl))

    def evaluate(self, dl) -> tuple[float, dict[str, float]]:
        """The loss and the metrics over ``dl`` (under torchrun, over the whole set);
        a loader of images is read as the model expects them (`model_loader`)."""
        return evaluate.evaluate(self, self.model_loader(dl))

    def inference_net(self, example: torch.Tensor) -> torch.nn.Module:
        """The model with its BatchNorm folded into its convolutions, for inference on
        many batches while the weights do not change (`snugfit.models.fold_batchnorm`:
        a copy, checked on ``example``, a batch as `eval_outputs` takes it); the
        learner's net itself when it is wrapped (torchrun, checkpointing) or the copy
        does not fit in memory."""
        if self.net is not self.model:
            return self.net
        try:
            return models.fold_batchnorm(self.model, self.prepare_input(example))
        except Exception as e:
            if not is_oom(e):
                raise
            release_memory(self.device)
            return self.model

    def model_loader(self, dl):
        """``dl`` normalised with the model's mean and std. `vision_learner` leaves the
        ``dls`` it is given as they are (``learn.dls`` is a copy with the model's
        preprocessing), so ``dls.valid``, or a loader of another data set, may hold
        ImageNet's statistics where the model wants others (EfficientNet-Lite's are
        0.5): its outputs would be wrong without a sign. Other loaders (features,
        lists of batches) are as they are."""
        if not isinstance(dl, DeviceLoader):
            return dl
        mine, theirs = self.preprocessing, dl.settings.preprocessing
        if list(theirs.mean) == list(mine.mean) and list(theirs.std) == list(mine.std):
            return dl
        return dl.with_preprocessing(theirs.replace(mean=mine.mean, std=mine.std))

    def validate(self) -> dict[str, float]:
        """Validation loss and metrics of the current weights."""
        loss, metrics = self.evaluate_valid(self.dls.valid)
        return {"valid_loss": loss, **metrics}

    def precompute_features(self):
        """Compute (or find) the frozen body's features of the training and validation
        images now, as the first fit on them would (`snugfit.train.precompute`).
        Returns the training images' ``(features, targets)``."""
        train, _ = feature_loaders(self, self._features)
        return train.feats, train.targs

    def evaluate_valid(self, dl) -> tuple[float, dict[str, float]]:
        """`evaluate` on the validation loader ``dl``; while the body is frozen and its
        validation features are stored (precomputed for these weights and images),
        the head on them instead: the same outputs without running the body."""
        return self._on_valid(self.evaluate, dl)

    def _on_valid(self, run, dl):
        """``run(dl)`` for the validation loader ``dl``, or ``run(features)`` through
        the head alone when its features for these weights are stored."""
        if self.net is not self.model:  # a fit on features: ``dl`` holds them already
            return run(dl)
        features = stored_valid_features(self, self._features)
        if features is None:
            return run(dl)
        net, self.net = self.net, self.model.get_classifier()
        try:
            return run(features)
        finally:
            self.net = net

    def pretraining_shift(self) -> float | None:
        """How unlike the pretraining data 32 of the training images (not augmented;
        whole batches, so at least 32) look to the body's BatchNorm statistics
        (`snugfit.models.batchnorm_shift`): about 0.1 for photos like ImageNet's,
        0.4 and more for textures or digit scans; None for a model without BatchNorm.
        Under torchrun, rank 0's figure on every rank."""
        xb, _ = self.dls.train.first_images(SHIFT_IMAGES, augment=False)
        shift = None
        if len(xb):
            shift = models.batchnorm_shift(self.model, lambda: self.eval_outputs(xb))
        return distributed.from_main(shift) if self.distributed else shift

    def predict(self, image) -> tuple[str | list[str], torch.Tensor]:
        """Classify one image (a path or a PIL image): ``(label, probabilities)``.

        Multi-label: ``(labels, probabilities)``, the labels being the classes whose
        probability is above ``threshold``, in vocabulary order (possibly none).
        """
        labels, probs = self.predict_many([image])
        return labels[0], probs[0]

    def predict_many(self, images: Sequence) -> tuple[list, torch.Tensor]:
        """`predict` for several images: a label (or list of labels) per image, and
        the ``(N, C)`` probabilities."""
        return evaluate.predict_many(self, images)

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Probabilities from model outputs: softmax, or sigmoid for multi-label models."""
        return self.task.activation(outputs)

    def tta(self, n: int = 4, dl=None, beta: float | None = 0.25, seed: int = 0):
        """Test-time augmentation (fastai's): ``(probs, targets)`` of ``dl`` (the
        validation set), ``(1 - beta) *`` the mean over ``n`` augmented passes ``+ beta *``
        the plain predictions; ``beta=None``: the augmented mean only (see `snugfit.infer.tta`)."""
        return tta.tta(self, n=n, dl=dl, beta=beta, seed=seed)

    def validate_tta(self, n: int = 4, beta: float | None = 0.25, seed: int = 0) -> dict:
        """`validate` with test-time augmentation: the loss and metrics of `tta`'s
        probabilities on the validation set (see `snugfit.infer.tta.tta_evaluate`)."""
        return tta.tta_evaluate(self, n=n, beta=beta, seed=seed)


def task_of(dls, infer: dict | None) -> Task:
    """The task: the data's, else the saved model's (``infer``), else single-label."""
    if dls is None:
        return task_from_config(infer or {})
    task = getattr(dls, "task", None)
    if task is not None:
        return task
    return MultiLabel() if getattr(dls, "multi_label", False) else SingleLabel()


def preprocessing_of(dls) -> Preprocessing:
    """``dls.preprocessing``; loaders without one (a custom or fake loader) describe
    their images by ``size``, ``mean``, ``std`` and ``crop_pct``."""
    p = getattr(dls, "preprocessing", None)
    if p is not None:
        return p
    return Preprocessing(dls.size, mean=dls.mean, std=dls.std, crop_pct=dls.crop_pct)
