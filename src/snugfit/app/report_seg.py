"""The report's sections for a segmentation run: the pixel confusion matrix, Dice and
IoU per class, and the validation images with the lowest Dice (image | truth |
prediction). `snugfit.app.report` puts them where a classifier's confusion matrix,
per-class report and top losses go."""

from __future__ import annotations

import torch

from snugfit.app.html_page import Raw, img, note, table, tensor_png
from snugfit.infer.interpret_seg import SegmentationInterpretation, colour_masks

_MAX_MATRIX = 30  # classes: above this the matrix's numbers are left out


def seg_sections(seg: SegmentationInterpretation | None) -> dict[str, str]:
    """``{"confusion", "classes", "top-losses"}`` of the report, for ``seg``."""
    if seg is None:
        missing = note("not computed: the run did not complete")
        return {"confusion": missing, "classes": missing, "top-losses": missing}
    return {"confusion": _confusion(seg), "classes": _classes(seg), "top-losses": _worst(seg)}


def _confusion(seg: SegmentationInterpretation) -> str:
    conf = seg.confusion
    total = max(int(conf.sum()), 1)
    if len(seg.vocab) > _MAX_MATRIX:
        return note(f"{len(seg.vocab)} classes: the pixel confusion matrix is left out")
    rows = [[v, *(f"{n / total:.2%}" for n in r.tolist())] for v, r in zip(seg.vocab, conf,
                                                                         strict=True)]  # fmt: skip
    return (
        "<p>Pixels of each true class (rows) by predicted class (columns), as a share of "
        f"all {total:,} non-void validation pixels.</p>\n"
        + table(["actual \\ predicted", *seg.vocab], rows, left=1)
    )


def _classes(seg: SegmentationInterpretation) -> str:
    def cell(v: float) -> str:
        return "—" if v != v else f"{v:.4f}"  # NaN: absent from truth and prediction

    rows = [[r["class"], cell(r["dice"]), cell(r["iou"]), f"{r['pixels']:,}"]
            for r in seg.per_class()]  # fmt: skip
    bg = "" if seg.background is None else f" (the means leave out {seg.vocab[seg.background]})"
    return (
        f"<p>Dice and IoU per class over the whole validation set{bg}; — marks a class "
        "absent from both truth and prediction.</p>\n"
        + table(["class", "dice", "iou", "true pixels"], rows, left=1)
    )


def _worst(seg: SegmentationInterpretation) -> str:
    if not seg.worst:
        return note("no validation image")
    n = len(seg.vocab)
    rows = []
    for w in seg.worst:
        truth, pred = colour_masks(torch.stack([w.truth, w.pred]), n)
        cells = [img(tensor_png(t), f"item {w.index} {what}", "thumb", raw=True)
                 for t, what in ((w.image, "image"), (truth, "truth"), (pred, "prediction"))]  # fmt: skip
        rows.append([*(Raw(c) for c in cells), f"item {w.index}", f"{w.dice:.4f}"])
    return (
        "<p>The validation images with the lowest Dice (mean over the classes in their "
        "truth or prediction), lowest first.</p>\n"
        + table(["image", "truth", "prediction", "item", "dice"], rows, left=4)
    )
