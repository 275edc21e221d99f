"""The run report: one self-contained HTML page per training run, ``report.html``.

`write_report` reads what a run left in its folder (``config.json``,
``check.json``, ``metrics.csv``, ``events.jsonl``, ``skipped.txt``, ``loss.png``,
``lr.png``, ``batch.png``) and, when given one, a `ClassificationInterpretation`
of the final model, and writes one page with a section for each:

* ``run``: how the run ended (completed, stopped on a non-finite loss, interrupted,
  stopped by a failed write) and, for a resumed run, the checkpoint it resumed from;
* ``config``: the configuration;
* ``data``: the data check (images per class and split, problems found);
* ``memory``: each memory plan, under the phase it was made for (``plan`` events);
* ``curves``: the loss and learning-rate plots;
* ``metrics``: the metrics of each epoch (``metrics.csv``);
* ``confusion``: the confusion matrix, plotted and as numbers, and the most confused pairs;
* ``classes``: precision, recall and F1 per class (multi-label: per label);
* ``top-losses``: the validation images with the largest losses, as thumbnails;

(the confusion matrix and top losses are for single-label runs; a multi-label
run's page says so, and has the per-label report);
* ``oom``: out-of-memory events and the settings each retry moved to;
* ``skipped``: files training could not read;
* ``events``: the whole event log (see `snugfit.events`), each event with its run.

A resumed run appends to the folder's ``events.jsonl``: the run, memory and OOM
sections describe the last run (`snugfit.events.runs`), and say what earlier runs
left in the log. A section whose inputs do not exist says so instead. The page needs no network
and no script: the CSS is inline and images are PNG ``data:`` URIs. It is plain
string building (the pieces are in `snugfit.app.html_page`) with every value from
the run escaped (file names, class names and error messages can hold ``<`` or ``&``).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path

from snugfit.app.html_page import (
    Raw,
    code_list,
    escape,
    figure_png,
    img,
    kv_table,
    note,
    page,
    table,
    tensor_png,
)
from snugfit.app.report_memory import memory_section, oom_section
from snugfit.app.report_seg import seg_sections
from snugfit.app.run_folder import (
    CHECK,
    CONFIG,
    EVENTS,
    METRICS,
    REPORT,
    SKIPPED,
    RunFolder,
    skipped_summary,
)
from snugfit.data.check_report import describe, problem_groups
from snugfit.events import read_events, runs
from snugfit.saving.atomic import atomic_write

__all__ = ["EVENTS", "REPORT", "SECTIONS", "build_report", "write_report"]

SECTIONS = (
    ("run", "Run"),
    ("config", "Configuration"),
    ("data", "Data check"),
    ("memory", "Memory plan per phase"),
    ("curves", "Loss and learning rate"),
    ("metrics", "Metrics per epoch"),
    ("confusion", "Confusion matrix"),
    ("classes", "Per-class report"),
    ("top-losses", "Top losses"),
    ("oom", "Out-of-memory events"),
    ("skipped", "Skipped files"),
    ("events", "Event log"),
)
_MAX_MATRIX = 50  # classes: above this the confusion numbers are left out (the plot stays)
_MAX_LISTED = 200  # rows of a file list (skipped, unreadable...) shown in the page


def write_report(
    run_dir: str | os.PathLike,
    interp=None,
    status: str = "completed",
    events: Sequence[dict] | None = None,
    top_k: int = 9,
    per_label: dict | None = None,
    seg=None,
) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    Args:
        run_dir: the run folder.
        interp: a `ClassificationInterpretation` of the final model (None: the
            confusion, per-class and top-loss sections say it is not available).
        status: how the run ended: "completed", or the reason it stopped.
        events: the event log; default ``run_dir/events.jsonl``.
        top_k: images in the top-losses section.
        per_label: a multi-label run's `snugfit.infer.interpret.per_label_report` of
            the final model (None: not computed, or a single-label run).
        seg: a segmentation run's `SegmentationInterpretation` of the final model
            (`snugfit.app.report_seg` shows it).
    """
    run_dir = Path(run_dir)
    page = build_report(run_dir, interp, status, events, top_k, per_label, seg)
    path = RunFolder(run_dir).report

    def write(tmp):
        Path(tmp).write_text(page, encoding="utf-8")

    atomic_write(path, write)
    return path


def build_report(
    run_dir: Path,
    interp=None,
    status: str = "completed",
    events: Sequence[dict] | None = None,
    top_k: int = 9,
    per_label: dict | None = None,
    seg=None,
) -> str:
    """The page `write_report` writes, as a string."""
    folder = RunFolder(run_dir)
    log = list(read_events(folder.events) if events is None else events)
    by_run = runs(log)
    events = by_run[-1] if by_run else []  # the last run: a resumed one appends
    earlier = [e for run in by_run[:-1] for e in run]
    config = _read_json(folder.config)
    multi = per_label is not None or config.get("label_delim") is not None
    solved = _solved(events)
    body = {
        "run": _run(run_dir, status, events, len(by_run)),
        "config": _config(config),
        "data": _data(_read_json(folder.check), folder.batch_png),
        "memory": memory_section(events),
        "curves": _curves(folder, solved),
        "metrics": _metrics(folder.metrics, solved),
        "confusion": note(_SINGLE_LABEL_ONLY) if multi else _confusion(interp),
        "classes": _labels(per_label) if multi else _classes(interp),
        "top-losses": note(_SINGLE_LABEL_ONLY) if multi else _top_losses(interp, top_k),
        "oom": oom_section(events, earlier),
        "skipped": _skipped(folder.skipped),
        "events": _event_log(by_run),
    }
    if seg is not None:
        body.update(seg_sections(seg))
    title = f"snugfit run: {config.get('arch', '')} on {config.get('data', run_dir)}"
    nav = " ".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name in SECTIONS)
    sections = "\n".join(
        f'<section id="{sid}">\n<h2>{escape(name)}</h2>\n{body[sid]}\n</section>'
        for sid, name in SECTIONS
    )
    return page(title, f"<nav>{nav}</nav>\n{sections}")


# -- sections -------------------------------------------------------------------------


def _run(run_dir: Path, status: str, events: list[dict], n_runs: int) -> str:
    ok = status == "completed"
    rows = [("status", status), ("run folder", str(run_dir.resolve()))]
    started = next((e["time"] for e in events if e["kind"] == "run_start"), None)
    if started is not None:
        rows.append(("started", _when(started)))
        if events:
            rows.append(("duration", f"{events[-1]['time'] - started:.1f} s"))
    resumed = next((e for e in events if e["kind"] == "resume"), None)
    if resumed is not None:
        p = resumed.get("position") or {}
        at = f"fit {p.get('fit_index')}, epoch {p.get('epoch')}, batch {p.get('iter')}"
        rows.append(("resumed from", f"{resumed.get('checkpoint')} at {at}"))
    if n_runs > 1:
        rows.append(("earlier runs", f"{n_runs - 1} in this folder (their events: event log)"))
    rows += [("body", _body(e)) for e in events if e["kind"] == "unfreeze"][-1:]
    kept = [e for e in events if e["kind"] == "kept"]
    if kept:
        rows.append(("weights kept", _kept(kept[-1])))
    rows += [("with TTA", _tta(e)) for e in events if e["kind"] == "tta"]
    rows.append(("report written", _when(datetime.datetime.now().timestamp())))
    cls = "ok" if ok else "bad"
    return f'<p class="status {cls}">{escape(status)}</p>\n' + kv_table(rows)


def _kept(event: dict) -> str:
    """Which weights the recipe kept, plainly when training improved on nothing."""
    if event["phase"] == "start":
        return ("the pretrained model as it started: no training phase improved on it "
                "(with ImageNet class names: ImageNet's own classifier for your classes)")  # fmt: skip
    epoch = event.get("epoch")
    return f"after phase '{event['phase']}'" + (f", epoch {epoch}" if epoch is not None else "")


def _body(event: dict) -> str:
    """auto_fit's decision to train the body or keep it frozen, and its measure."""
    what = "trained after the head" if event["decision"] else "kept frozen: the head is the model"
    if event.get("shift") is None:
        return what
    at = f" at {event['size']} px" if event.get("size") else ""
    return f"{what} (BatchNorm shift {event['shift']:.2f}{at}, limit {event['max_shift']:g})"


def _tta(event: dict) -> str:
    """The final model's validation with test-time augmentation, against without."""
    plain, tta = event["plain"], event["tta"]
    return f"{event['n']} augmented passes: " + ", ".join(
        f"{k} {tta[k]:.4f} (without: {plain[k]:.4f})" for k in tta if k in plain
    )


def _config(config: dict) -> str:
    if not config:
        return note(f"no {CONFIG} in the run folder")
    return kv_table([(k, _short(v)) for k, v in config.items()])


def _data(check: dict, batch_png: Path) -> str:
    if not check:
        return note(f"no {CHECK} in the run folder")
    classes, counts = check.get("classes", []), check.get("counts", {})
    train, valid = counts.get("train", {}), counts.get("valid", {})
    bad = check.get("unusable", {})
    n_bad = len(check.get("unreadable", [])) + len(check.get("missing", []))
    images = check.get("images") or {"train": sum(train.values()), "valid": sum(valid.values())}
    rows = [[c, train.get(c, 0), valid.get(c, 0), bad.get(c, 0)] for c in classes]
    multi = check.get("multi_label", False)
    rows.append(["images" if multi else "total", images["train"], images["valid"], n_bad])
    how = describe(check)
    out = [
        f"<p>{escape(check.get('root', ''))}: {escape(how)}; {check.get('usable', '?')} of "
        f"{check.get('files', '?')} image files usable.</p>",
        table(
            [
                "label" if multi else "class",
                "train",
                "valid",
                "unreadable or missing" if check.get("csv") else "unreadable",
            ],
            rows,
            left=1,
        ),
    ]
    if multi:
        out.append("<p>Multi-label: an image counts once under each of its labels.</p>")
    problems = problem_groups(check)
    if problems:
        out.append("<h3>Problems</h3>\n<ul>")
        for head, lines in problems:
            out.append(f"<li>{escape(head)}{code_list(lines, _MAX_LISTED, CHECK)}</li>")
        out.append("</ul>")
    else:
        out.append("<p>No problems found.</p>")
    if batch_png.is_file():
        out.append("<h3>An augmented training batch</h3>")
        out.append(img(batch_png.read_bytes(), "an augmented training batch", "batch"))
    return "\n".join(out)


def _solved(events: Sequence[dict]) -> str:
    """A line on the head solved on stored features (no batch or epoch ran for it),
    with its validation figures; "" when none was."""
    found = [e for e in events if e["kind"] == "head_validated"]
    if not found:
        return ""
    figures = ", ".join(f"{k} {v:.4f}" for k, v in found[-1].items() if k not in ("kind", "time"))
    return f" (the head was solved on the stored features: {figures})"


def _curves(folder: RunFolder, solved: str = "") -> str:
    out = []
    for path, alt in (
        (folder.loss_png, "training and validation loss"),
        (folder.lr_png, "learning rate"),
    ):
        if path.is_file():
            out.append(img(path.read_bytes(), alt, path.stem))
        else:
            out.append(note(f"no {path.name}: no training batch ran{solved}"))
    return "\n".join(out)


def _metrics(path: Path, solved: str = "") -> str:
    if not path.is_file():
        return note(f"no {METRICS}: no epoch finished{solved}")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return note(f"no epoch finished{solved}")
    return table(rows[0], rows[1:])


def _confusion(interp) -> str:
    if interp is None:
        return note("not computed: the run did not complete")
    fig = interp.plot_confusion_matrix()
    out = [img(figure_png(fig), "confusion matrix", "confusion")]
    vocab = interp.vocab
    if len(vocab) <= _MAX_MATRIX:
        cm = interp.confusion_matrix().tolist()
        head = ["actual \\ predicted", *vocab]
        out.append(table(head, [[v, *r] for v, r in zip(vocab, cm, strict=True)], left=1))
    else:
        out.append(note(f"{len(vocab)} classes: the numbers are left out, see the plot"))
    confused = interp.most_confused()[:20]
    if confused:
        out.append("<h3>Most confused</h3>")
        out.append(table(["actual", "predicted", "count"], confused, left=2))
    return "\n".join(out)


def _classes(interp) -> str:
    if interp is None:
        return note("not computed: the run did not complete")
    report = interp.per_class_report()
    rows = [_score_row(r["class"], r) for r in report["classes"]]
    rows += [_score_row(f"{name} avg", report[name]) for name in ("macro", "weighted")]
    rows.append(["accuracy", "", "", f"{report['accuracy']:.4f}", len(interp)])
    return table(["class", "precision", "recall", "f1", "support"], rows, left=1)


_SINGLE_LABEL_ONLY = (
    "for single-label runs only: this run is multi-label (each image has a set of labels); "
    "see the per-label report"
)


def _labels(report: dict | None) -> str:
    if report is None:
        return note("not computed: the run did not complete")
    rows = [_score_row(r["class"], r) for r in report["classes"]]
    rows += [_score_row(f"{name} avg", report[name]) for name in ("macro", "weighted")]
    rows.append(["f1 (samples avg)", "", "", f"{report['f1_samples']:.4f}", rows[-1][-1]])
    rows.append(["accuracy_multi", "", "", f"{report['accuracy_multi']:.4f}", rows[-1][-1]])
    return (
        f"<p>Multi-label: each label scored on its own (predicted when its probability is "
        f"above {report['threshold']:g}); support is the images that have the label.</p>\n"
        + table(["label", "precision", "recall", "f1", "support"], rows, left=1)
    )


def _score_row(name: str, r: dict) -> list:
    return [name, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]


def _top_losses(interp, k: int) -> str:
    if interp is None:
        return note("not computed: the run did not complete")
    losses, idx = interp.top_losses(k)
    idx = idx.tolist()
    try:
        images = interp.images_at(idx)
    except Exception as e:  # no files and no loader: the numbers alone
        images = [None] * len(idx)
        missing = note(f"no thumbnails: {e}")
    else:
        missing = ""
    rows = []
    for pos, (i, image) in enumerate(zip(idx, images, strict=True)):
        actual, pred = int(interp.targets[i]), int(interp.preds[i])
        thumb = "" if image is None else img(tensor_png(image), f"item {i}", "thumb", raw=True)
        name = _short_path(interp.items[i]) if interp.items is not None else f"item {i}"
        rows.append(
            [
                Raw(thumb),
                name,
                interp.vocab[actual],
                interp.vocab[pred],
                f"{float(losses[pos]):.4f}",
                f"{float(interp.probs[i, actual]):.4f}",
            ]
        )
    head = ["image", "file", "actual", "predicted", "loss", "probability of actual"]
    return missing + table(head, rows, left=4)


def _skipped(path: Path) -> str:
    if not path.is_file():
        return "<p>No file was skipped.</p>"
    lines = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [(p, why[0] if why else "") for p, *why in lines if p]
    shown = rows[:_MAX_LISTED]
    more = len(rows) - len(shown)
    return (
        f"<p>{escape(skipped_summary(why for _, why in rows))}, skipped by training.</p>\n"
        + table(["file", "reason"], shown, left=2)
        + (note(f"... and {more} more in {SKIPPED}") if more else "")
    )


def _event_log(by_run: list[list[dict]]) -> str:
    if not by_run:
        return note(f"no {EVENTS} in the run folder")
    t0 = by_run[0][0]["time"]
    rows = []
    for n, run in enumerate(by_run, start=1):
        for e in run:
            fields = {k: v for k, v in e.items() if k not in ("time", "kind", "candidates")}
            text = json.dumps(fields, ensure_ascii=False, default=str)
            rows.append([n, f"{e['time'] - t0:.1f}", e["kind"], text[:400]])
    count = f"{len(rows)} events" + (f" of {len(by_run)} runs" if len(by_run) > 1 else "")
    return (
        f"<details><summary>{count} ({EVENTS})</summary>\n"
        + table(["run", "s", "kind", "fields"], rows, left=4)
        + "</details>"
    )


# -- values ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _short(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _short_path(path) -> str:
    """The file with its folder (its class, in the usual layouts)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")
