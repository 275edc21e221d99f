"""Solving the head: the linear classifier on stored features, fitted to its optimum.

While the body is frozen and augmentation is off, training the head on the stored
features is a convex problem: L2-regularised logistic regression (a softmax over
the classes; independent sigmoids for multi-label data). L-BFGS over all the
features at once solves it in well under a second for thousands of images,
where epochs of Adam at a swept learning rate stop short of the optimum.
Measured on the packaged Lite0's frozen features (training images with the
validation transform, `snugfit.train.precompute`): hymenoptera with neutral
class names at 336 px, 2.0% validation error solved against 4.6% after 4 epochs
of Adam on the same features (``bench/head_scale.py``'s head, seeds 0-2);
scikit-image textures at 96 px 3.3% against 4.6%; scikit-learn's digits at 96
px 5.3% against 5.1%. In ``auto_fit`` (``bench/recipe.py``, seeds 0-2) the
headline went from 3.3% in 37 s to 2.0% in 24 s.

The features are standardised first (each one's training mean and standard
deviation), which conditions the solver and lets one penalty ``wd`` suit any
body: 1e-3 and 1e-2 gave the same errors on hymenoptera and textures and one
image apart on digits (0.1 lost one image on textures). Features that
never vary get a zero weight. A feature that barely varies (a unit that hardly
fires on these images) is scaled by at least `SD_FLOOR` (0.1) times the median
feature's deviation: standardised by its own tiny one, its noise was fitted with
weights of hundreds, which made validation loss worse (digits at 64 px: weights up
to 404, validation loss 0.557 and 5.6% error; floored: 1.5, 0.154 and 5.0%;
textures at 96 px: 0.182 and 4.4% against 0.088 and 3.9%) and logits jump when
such a unit fires at all. Hymenoptera's features have no such unit: the same
solution (2.0% at 336 px, 5.2% at 224). The standardisation is folded back into the
Linear layer's weight and bias, so the model keeps its shape and outputs
``x @ W.T / sd + (b - W @ (mean / sd))`` for raw features ``x``.

Equivalents: scikit-learn's ``LogisticRegression(solver="lbfgs",
C=1 / (wd * n_images))`` after ``StandardScaler``: the "linear probe" by which
papers since CLIP's evaluate frozen features. fastai has none (its head trains by
epochs only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from snugfit.errors import SnugfitError, check_positive

MAX_ITER = 500  # L-BFGS iterations; converged in well under 100 on the data above
# A feature's scale for the penalty is at least this fraction of the median feature's
# (see the module docstring).
SD_FLOOR = 0.1


def solvable(head: nn.Module) -> bool:
    """Whether ``head`` is a classifier this module can solve: one Linear layer."""
    return isinstance(head, nn.Linear)


def solve_linear(
    feats, targs: torch.Tensor, n_out: int, multi_label: bool, wd: float = 1e-2, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The optimal linear classifier of ``feats`` (N, D) for ``targs``: ``(weight
    (n_out, D), bias (n_out,), training loss)``, in terms of the raw features.

    ``targs``: class indices (N,) or, multi-label, 0/1 targets (N, n_out). The loss
    is the mean cross-entropy (multi-label: binary cross-entropy summed over the
    classes) plus ``wd / 2`` times the squared weights of the standardised features.
    """
    check_positive("wd", wd)
    x = torch.as_tensor(feats).to(device, torch.float32)  # a tensor, or memory-mapped numpy
    y = targs.to(device)
    if len(x) == 0:
        raise SnugfitError("solve_head: no training features")
    bad = int((~torch.isfinite(x).all(1)).sum())
    if bad:
        raise SnugfitError(f"solve_head: {bad} of {len(x)} images have non-finite features")
    mean = x.mean(0)
    sd = x.std(0, unbiased=False)
    varies = sd > 1e-6
    if SD_FLOOR and varies.any():
        sd = sd.clamp(min=SD_FLOOR * float(sd[varies].median()))
    sd = torch.where(varies, sd, torch.full_like(sd, float("inf")))  # constant: weight 0
    z = (x - mean) / sd
    w = torch.zeros(n_out, x.shape[1], device=device, requires_grad=True)
    b = torch.zeros(n_out, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        logits = torch.addmm(b, z, w.t())
        if multi_label:
            data = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum") / len(z)
        else:
            data = F.cross_entropy(logits, y)
        return data + wd / 2 * w.pow(2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = objective().item()
        weight = w / sd
        bias = b - (w * (mean / sd)).sum(1)
    return weight.detach(), bias.detach(), loss


def write_linear(head: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Put ``weight`` and ``bias`` into ``head`` (in its dtype, on its device)."""
    if tuple(head.weight.shape) != tuple(weight.shape) or head.bias is None:
        raise SnugfitError(
            f"solve_head: the classifier is Linear{tuple(head.weight.shape)[::-1]}"
            f"{'' if head.bias is not None else ' without bias'}; the solution is "
            f"{tuple(weight.shape)[::-1]} with a bias"
        )
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
