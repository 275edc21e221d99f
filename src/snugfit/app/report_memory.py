"""The report's memory sections: the plans made for each fit and the out-of-memory
errors recovered (from the run's event log)."""

from __future__ import annotations

from snugfit.app.html_page import escape, note, table
from snugfit.sizes import check_size, format_size


def memory_section(events: list[dict]) -> str:
    """Under each fit (and its phase), the plans made for it or a note that the
    last one still holds (a plan is made again only when the frozen layers, the
    image size or the batch size change)."""
    out, phase, planned, in_fit, fit_plans = [], None, False, False, 0
    for e in events:
        kind = e["kind"]
        if kind == "phase" and not e.get("skipped"):
            phase = e["name"]
        elif kind == "fit_start":
            in_fit, fit_plans = True, 0
            where = f"fit {e['fit']}" + (f", phase: {phase}" if phase else "")
            out.append(
                f'<h3 class="plan">{escape(where)}</h3>\n<p>image size {format_size(check_size("size", e["size"]))}, batch '
                f"{e['bs']}, frozen to layer group {e['frozen_to']}"
                f"{', on precomputed features' if e.get('precompute') else ''}</p>"
            )
        elif kind == "plan":
            if not in_fit:  # e.g. for the lr_find sweep a recipe runs before the phase's fit
                where = f"phase: {phase}, before its fit" if phase else "before training"
                out.append(f'<h3 class="plan">{escape(where)}</h3>')
            planned, fit_plans = True, fit_plans + 1
            out.append(f"<p>{escape(e['summary'])}</p>\n{_plan_table(e)}")
        elif kind == "fit_end":
            if fit_plans == 0:
                out.append(note("no new plan: the frozen layers, size and batch are unchanged"))
            in_fit = False
    if not planned:
        if any(e["kind"] == "resume" for e in events):
            return note("no memory plan was made: this run resumed with its checkpoint's settings")
        return note(
            "no memory plan was made: plans are made on a GPU, or when a memory budget "
            "is given (--memory-budget)"
        )
    return "\n".join(out)


def _plan_table(plan: dict) -> str:
    title = f"budget {_bytes(plan['budget'])} on {plan['device_type']}"
    if plan.get("reserved"):
        title += f" ({_bytes(plan['reserved'])} reserved)"
    head = ["", "candidate", "micro-batch", "accum steps", "predicted peak", "fits", "rel. speed"]
    rows, chosen = [], plan.get("chosen")
    for i, c in enumerate(plan.get("candidates", [])):
        mark = "▶" if i == chosen else ""
        rows.append(
            [
                mark,
                c["label"],
                c["micro_bs"],
                c["accumulate"],
                _bytes(c["peak"]),
                "yes" if c["fits"] else "no",
                f"{c['speed']:.2f}",
            ]
        )
    marked = {chosen} if chosen is not None else set()
    return f"<p>{escape(title)}</p>\n" + table(head, rows, left=2, marked=marked)


def oom_section(events: list[dict], earlier: list[dict]) -> str:
    ooms = [e for e in events if e["kind"] == "oom"]
    before = sum(e["kind"] == "oom" for e in earlier)
    more = note(f"and {before} in earlier runs of this folder (event log)") if before else ""
    if not ooms:
        return "<p>No out-of-memory errors.</p>" + more
    rows = [
        [
            e.get("phase", ""),
            e.get("fit", ""),
            e.get("epoch", ""),
            e.get("batch", ""),
            _settings(e.get("from")),
            _settings(e.get("to")),
            e.get("error", ""),
        ]
        for e in ooms
    ]
    head = ["phase", "fit", "epoch", "batch", "from", "retried with", "error"]
    return f"<p>{len(ooms)} recovered.</p>\n" + table(head, rows, left=7) + more


def _settings(s) -> str:
    if isinstance(s, dict):
        parts = [f"micro-batch {s.get('micro_bs')}", str(s.get("precision"))]
        if s.get("checkpointing"):
            parts.append("checkpointing")
        return ", ".join(parts)
    return "" if s is None else f"chunks of {s}"


def _bytes(n) -> str:
    from snugfit.memory import format_bytes

    return format_bytes(int(n))
