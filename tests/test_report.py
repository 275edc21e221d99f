"""The run report: written by every `snugfit train` run, self-contained, rendered by Chromium."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import snugfit.app.run
from fixtures import make_image_folder
from snugfit.app.cli import main
from snugfit.app.report import SECTIONS, build_report, write_report
from snugfit.callbacks import Callback
from snugfit.infer.interpret import ClassificationInterpretation
from test_cli import TRAIN
from test_oom import inject_oom

ARTIFACTS = Path(__file__).parent / "artifacts"  # git-ignored: screenshots to look at
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_TIMEOUT = 300  # seconds for apt-get (measured: 10 s from a Debian 12 mirror)


# -- headless Chromium ------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """A Chromium binary: on PATH (or $SNUGFIT_CHROMIUM), else installed with apt-get."""
    found = _find_chromium()
    if found is None:
        why = _install_chromium()
        found = _find_chromium()
        if found is None:
            pytest.skip(f"headless Chromium is missing and could not be installed: {why}")
    return found


def _find_chromium() -> str | None:
    given = os.environ.get("SNUGFIT_CHROMIUM")
    if given:
        return given
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _install_chromium() -> str:
    """Install Debian's chromium package; the reason it failed, or "" when it ran."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "no apt-get on this system"
    sudo = []
    if getattr(os, "geteuid", lambda: -1)() != 0:
        if shutil.which("sudo") is None:
            return "not root, and no sudo to run apt-get"
        sudo = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + INSTALL_TIMEOUT
    install = [*sudo, apt, "install", "-y", "-q", "--no-install-recommends", "chromium"]
    # Stale package lists (a 404 or "unable to locate"): update them once and retry.
    for command in (install, [*sudo, apt, "update", "-q"], install):
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=env,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{' '.join(command)}: {e}"
        if done.returncode == 0 and command is install:
            return ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return f"{' '.join(install)} failed: {lines[-1] if lines else done.returncode}"


def _headless(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"  # never the user's own profile
    command = [
        chromium,
        "--headless=new",
        "--no-sandbox",  # as root, and in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


# Added to a copy of the page (the report itself has no script): after the load
# event, each image says whether it decoded and each section how tall it is.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.dataset.w = img.naturalWidth;
  for (const s of document.querySelectorAll("section")) s.dataset.h = s.offsetHeight;
  document.body.dataset.height = document.documentElement.scrollHeight;
  document.body.dataset.loaded = "yes";
});
</script>"""


class _Dom(html.parser.HTMLParser):
    """Sections (id, height), their h2 headings, and images (name, width) of a DOM dump."""

    def __init__(self):
        super().__init__()
        self.sections, self.headings, self.images, self.body = {}, [], [], {}
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections[a["id"]] = int(a.get("data-h", "0"))
        elif tag == "img":
            self.images.append((a.get("data-name"), int(a.get("data-w", "0"))))
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "body":
            self.body = a

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


def render(chromium: str, report: Path, tmp_path: Path) -> tuple[_Dom, Path]:
    """The DOM of ``report`` after loading in headless Chromium, and its screenshot."""
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text("utf-8").replace("</body>", PROBE + "</body>"), "utf-8")
    dumped = _headless(chromium, tmp_path, "--dump-dom", probe.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _Dom()
    dom.feed(dumped.stdout)
    shot = tmp_path / "report.png"
    height = min(int(dom.body.get("data-height", 4000)), 16000)  # the whole page, in one image
    size = f"--window-size=1200,{height}"
    taken = _headless(chromium, tmp_path, f"--screenshot={shot}", size, report.as_uri())
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    return dom, shot


# -- the report of a run ----------------------------------------------------------------


def train(capsys, data: Path, out: Path, *extra: str) -> tuple[int, str]:
    code = main(["train", str(data), *TRAIN, "--out", str(out), *extra])
    return code, capsys.readouterr().err


def with_learner(monkeypatch, setup):
    """Make `snugfit train` call ``setup(learn)`` on the learner it builds."""
    build = snugfit.app.run.learner_for

    def patched(*args, **kwargs):
        learn = build(*args, **kwargs)
        setup(learn)
        return learn

    monkeypatch.setattr(snugfit.app.run, "learner_for", patched)


def test_report_renders_its_sections_and_images_in_chromium(
    chromium, image_folder, tmp_path, capsys, monkeypatch
):
    (image_folder / "train" / "red" / "broken.jpg").write_bytes(b"not an image")
    # OOMs injected on the CPU while whole batches train on images: micro-batch 8 -> 4
    with_learner(
        monkeypatch,
        lambda learn: inject_oom(learn.model, lambda x: learn.model.training and len(x) > 4),
    )
    out = tmp_path / "run"
    code, err = train(
        capsys, image_folder, out, "--epochs", "1", "--head-epochs", "1", "--memory-budget", "1GB"
    )
    assert code == 0, err
    page = (out / "report.html").read_text("utf-8")
    # self-contained: no reference outside the page
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', page)
    assert "<script" not in page and "<link" not in page

    dom, shot = render(chromium, out / "report.html", tmp_path)
    assert dom.body.get("data-loaded") == "yes"
    assert list(dom.sections) == [sid for sid, _ in SECTIONS]
    assert dom.headings == [name for _, name in SECTIONS]
    assert all(h > 0 for h in dom.sections.values()), dom.sections  # each one laid out
    names = [name for name, _ in dom.images]
    assert {"batch", "loss", "lr", "confusion"} <= set(names)
    assert names.count("thumb") == 8  # every validation image: 8 < the 9 asked for
    assert all(w > 0 for _, w in dom.images), dom.images  # every image decoded
    assert shot.stat().st_size > 10_000

    # the numbers behind the sections
    assert "broken.jpg" in page and "unreadable" in page  # data check and skipped files
    assert page.count('<h3 class="plan">') >= 2  # head, and unfrozen
    assert "plan: " in page and "▶" in page  # the chosen candidate marked
    assert "micro-batch 8, bf16" in page or "micro-batch 8, fp32" in page  # the OOM's from
    events = [json.loads(line) for line in (out / "events.jsonl").open()]
    assert [e for e in events if e["kind"] == "oom"]
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 3  # header and one row per fit, each in the metrics table
    assert all(f"<td>{cell}</td>" in page for cell in rows[1].split(",")[1:3])


class PressCtrlC(Callback):
    """Ctrl-C during the first step of fit ``fit_index`` (1: the unfrozen fit of fine_tune)."""

    def __init__(self, fit_index: int = 1):
        self.fit_index = fit_index

    def after_loss(self, learn):
        if learn.fit_index == self.fit_index and learn.train_iter == 0:
            signal.raise_signal(signal.SIGINT)


def test_a_run_stopped_by_ctrl_c_still_writes_its_report(
    image_folder, tmp_path, capsys, monkeypatch
):
    with_learner(monkeypatch, lambda learn: learn.cbs.append(PressCtrlC()))
    out = tmp_path / "run"
    code, err = train(
        capsys, image_folder, out, "--recipe", "fine_tune", "--epochs", "1", "--freeze-epochs", "1"
    )
    assert code == 130, err
    page = (out / "report.html").read_text("utf-8")
    assert '<p class="status bad">interrupted (Ctrl-C)</p>' in page
    assert 'data-name="loss"' in page  # the curves of the batches that ran
    assert "not computed: the run did not complete" in page  # no confusion matrix
    events = [json.loads(line) for line in (out / "events.jsonl").open()]
    assert [e["kind"] for e in events[-4:]] == ["checkpoint", "interrupt", "fit_end", "run_end"]
    assert events[-1]["status"] == "interrupted (Ctrl-C)"


def test_report_escapes_what_comes_from_the_run(tmp_path):
    """File, class and error text with HTML characters stays text; numbers are as given."""
    run = tmp_path / "run"
    run.mkdir()
    items = make_image_folder(tmp_path / "data", classes=("a<b", "c&d"), n_train=1, n_valid=2)
    files = sorted((items / "val").rglob("*.jpg"))
    (run / "config.json").write_text(json.dumps({"arch": "<i>net</i>", "data": "x"}))
    (run / "skipped.txt").write_text("<script>alert(1)</script>.jpg\tcannot identify image\n")
    oom = {"phase": "train", "epoch": 0, "batch": 3, "error": "OutOfMemoryError: <2 GiB>"}
    oom |= {"from": {"micro_bs": 8, "precision": "fp32", "checkpointing": False}}
    oom |= {"to": {"micro_bs": 4, "precision": "fp32", "checkpointing": False}}
    events = [{"time": 0.0, "kind": "run_start"}, {"time": 1.0, "kind": "oom", **oom}]
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    targets = torch.tensor([0, 0, 1, 1])  # files sort as a<b, a<b, c&d, c&d
    interp = ClassificationInterpretation(probs, targets, ["a<b", "c&d"], items=files, size=32)
    page = write_report(run, interp, status="stopped: <nan>", events=events).read_text()

    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page
    assert "<i>net</i>" not in page and "&lt;i&gt;net&lt;/i&gt;" in page
    assert "stopped: &lt;nan&gt;" in page and "OutOfMemoryError: &lt;2 GiB&gt;" in page
    assert '<td class="l">micro-batch 8, fp32</td><td class="l">micro-batch 4, fp32</td>' in page
    # confusion numbers: rows actual, columns predicted
    assert '<tr><td class="l">a&lt;b</td><td>1</td><td>1</td></tr>' in page
    assert '<tr><td class="l">c&amp;d</td><td>1</td><td>1</td></tr>' in page
    # top losses: the largest first, -log p(actual)
    after_first_thumb = page[page.index('data-name="thumb"') :]
    first_file = re.search(r"(a&lt;b|c&amp;d)_val_\d\.jpg", after_first_thumb).group()
    assert first_file == "a&lt;b_val_1.jpg"
    assert f"{-torch.tensor(0.3).log().item():.4f}" in page
    # what the run did not leave says so
    assert "no check.json in the run folder" in page and "no metrics.csv" in page
    assert "no memory plan was made" in page


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}">')
    return page[start : page.index("</section>", start)]


def test_the_report_of_a_resumed_run_shows_its_own_plans_and_labels_the_runs(tmp_path):
    """A resumed run appends to events.jsonl: the killed run's plans and OOMs are not its."""

    def plan(summary: str) -> dict:
        return {"kind": "plan", "summary": summary, "budget": 2**30, "device_type": "cpu"}

    fit = {"size": 32, "bs": 8, "frozen_to": 0}
    oom = {"phase": "train", "epoch": 0, "batch": 1, "error": "OutOfMemoryError"}
    ckpt = "run/checkpoint.safetensors"
    events = [
        {"time": 0.0, "kind": "run_start", "out": "run", "resume": None},
        {"time": 1.0, "kind": "fit_start", "fit": 0, **fit},
        {"time": 1.1, **plan("plan of the killed run")},
        {"time": 1.2, "kind": "oom", **oom},
        {"time": 9.0, "kind": "run_start", "out": "run", "resume": ckpt},
        {"time": 9.5, "kind": "resume", "checkpoint": ckpt,
         "position": {"fit_index": 0, "epoch": 0, "iter": 3}},
        {"time": 10.0, "kind": "fit_start", "fit": 0, **fit},
        {"time": 10.1, **plan("plan of the resumed run")},
        {"time": 12.0, "kind": "fit_end", "fit": 0},
    ]  # fmt: skip
    page = build_report(tmp_path, events=events)
    memory = _section(page, "memory")
    assert "plan of the resumed run" in memory and "plan of the killed run" not in memory
    assert memory.count('<h3 class="plan">') == 1
    run = _section(page, "run")
    assert f"{ckpt} at fit 0, epoch 0, batch 3" in run and "1 in this folder" in run
    assert 'duration</td><td class="l">3.0 s' in run  # the last run's: 9.0 -> 12.0
    ooms = _section(page, "oom")
    assert "No out-of-memory errors." in ooms and "and 1 in earlier runs" in ooms
    log = _section(page, "events")
    assert "9 events of 2 runs" in log
    assert "plan of the killed run" in log and "plan of the resumed run" in log
    cells = re.findall(r"<tr><td class=\"l\">(\d)</td>", log)  # the run column
    assert cells == ["1"] * 4 + ["2"] * 5


@pytest.mark.parametrize(
    ("decision", "shift", "expected"),
    [
        (
            False,
            0.0912,
            "kept frozen: the head is the model (BatchNorm shift 0.09 at 336 px, limit 0.35)",
        ),
        (True, 0.7734, "trained after the head (BatchNorm shift 0.77 at 336 px, limit 0.35)"),
        (True, None, "trained after the head</td></tr>"),
    ],
)
def test_the_report_says_whether_the_body_trained_and_why(tmp_path, decision, shift, expected):
    events = [
        {"time": 0.0, "kind": "run_start"},
        {
            "time": 1.0,
            "kind": "unfreeze",
            "decision": decision,
            "shift": shift,
            "max_shift": 0.35,
            "size": "336",
        },
        {"time": 2.0, "kind": "kept", "phase": "head", "epoch": 1, "valid_loss": 0.1},
    ]
    page = build_report(tmp_path, events=events)
    assert f'<tr><td class="l">body</td><td class="l">{expected}' in page
    assert '<td class="l">after phase &#x27;head&#x27;, epoch 1</td>' in page


def test_a_solved_head_is_named_where_no_epoch_ran(tmp_path):
    solved = {"time": 1.0, "kind": "head_validated", "valid_loss": 0.076, "error_rate": 0.0196}
    page = build_report(tmp_path, events=[{"time": 0.0, "kind": "run_start"}, solved])
    said = "the head was solved on the stored features: valid_loss 0.0760, error_rate 0.0196)"
    assert f"no metrics.csv: no epoch finished ({said}" in page
    assert f"no loss.png: no training batch ran ({said}" in page
    page = build_report(tmp_path, events=[{"time": 0.0, "kind": "run_start"}])
    assert "no metrics.csv: no epoch finished</p>" in page and "the head was solved" not in page
