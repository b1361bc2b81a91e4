"""`xrun report`: the page opened in a real headless browser (Debian's chromium), runs made by the real engine."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments import INPUT, INPUT_TEXT, write_experiment
from runner.attest import generate_keypair
from runner.cli import main
from runner.pipeline import RunOptions, run_experiment
from runner.runs.record import RunRecord

# Metric keys are the user's text: these must show as text, never run.
EVIL_KEY = "<img src=x onerror=\"document.body.dataset.pwned='img'\">"
EVIL_SCRIPT = "</script><script>document.body.dataset.pwned='script'</script>"
TRAIN = r'''
import json, os
seed = int(os.environ["XRUN_SEED"])
open("/outputs/model.txt", "w").write(f"model {seed}\n")
json.dump({"acc": 0.9 + seed / 1000, "loss": [1.0 / (s + 1) + seed / 100 for s in range(8)],
           EVIL_KEY: 1, EVIL_SCRIPT: 2}, open("/outputs/metrics.json", "w"))
'''.replace("EVIL_KEY", json.dumps(EVIL_KEY)).replace("EVIL_SCRIPT", json.dumps(EVIL_SCRIPT))


def chromium() -> str:
    """Debian's chromium; fails the run (never skips) when it is missing."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed (apt-get install chromium); scripts/setup does it", pytrace=False)
    return exe


def browse(page: Path, *, screenshot: Path | None = None) -> str:
    """The DOM of the page after its scripts ran (and a screenshot when asked)."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--virtual-time-budget=10000", "--window-size=1280,2000"]
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    done = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def reported_experiment(root: Path, base_image: str, seed: int) -> Path:
    return write_experiment(root, base_image, name="reported", files={"train.py": TRAIN, "input.txt": INPUT_TEXT},
                            exclude=["input.txt"], data=[INPUT], seed=seed, command=["python3", "train.py"],
                            timeout="5m", outputs=[{"path": "model.txt"}, {"path": "metrics.json", "metrics": True}])


def fake_run(runs: Path, index: int, name: str = "fake") -> None:
    """A finished run directory without an attestation (for what needs no engine)."""
    run = runs / f"20250101T00000{index}Z-abc{index:03d}"
    (run / "outputs").mkdir(parents=True)
    RunRecord(run_id=run.name, name=name, status="succeeded", manifest="/m", manifest_sha256="a" * 64,
              plan_digest="b" * 64, started_on="2025-01-01T00:00:00Z", finished_on="2025-01-01T00:01:00Z",
              outputs={"m.json": "c" * 64}, metrics={"m.json": {EVIL_KEY: 0.5, EVIL_SCRIPT: 0.25}},
              metric_steps={"m.json": {EVIL_KEY: [[0, 1.0], [1, 0.5]]}}).save(run / "run.json")
    (run / "plan.json").write_text(json.dumps({"seeds": {"global": index}}))


@pytest.mark.docker
def test_report_of_a_sweep_renders_in_chromium_with_runs_values_provenance_and_verification(
        tmp_path, base_image, monkeypatch, capsys):
    monkeypatch.setenv("XRUN_CACHE_DIR", str(tmp_path / "cache"))
    key, pub = generate_keypair("ecdsa-p256", tmp_path / "keys")
    _, other = generate_keypair("ed25519", tmp_path / "other")
    runs_dir = tmp_path / "runs"
    summaries = [run_experiment(reported_experiment(tmp_path / f"exp{s}", base_image, s),
                                RunOptions(runs_dir=runs_dir, quiet=True, key=key)) for s in (1, 2, 3)]
    page = tmp_path / "report.html"
    assert main(["report", "--experiment", "reported", "--runs-dir", str(runs_dir), "--key", str(pub),
                 "--out", str(page), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["runIds"] == [s.run_id for s in summaries] and written["sizeBytes"] == page.stat().st_size

    text = page.read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text), "the page must load nothing"
    screenshot = tmp_path / "report.png"
    dom = browse(page, screenshot=screenshot)
    print(f"report screenshot: {screenshot}")
    assert screenshot.stat().st_size > 20_000
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None and 'data-ready="1"' in body.group(1), body
    assert "data-errors" not in re.search(r"<html[^>]*>", dom).group(0) and "pwned" not in body.group(1)
    assert 'data-plots="5"' in body.group(1)  # acc, loss, the two odd keys (final values), and loss per step
    for s in summaries:
        assert s.run_id in dom and s.image_id[7:19] in dom
        assert s.outputs["model.txt"][:16] in dom
    table = runs_table(dom)
    assert table.count(">verified<") == 3 and "FAILED" not in dom
    for seed in (1, 2, 3):
        assert f"{0.9 + seed / 1000:.6g}" in dom  # the final acc of each run
    assert html_text(EVIL_KEY) in dom and html_text(EVIL_SCRIPT) in dom  # shown as text
    svg = dom[dom.index('<svg id="provenance"'):]
    for label in ("base image", "input", "data", "model.txt", "seed 2"):
        assert label in svg, label
    # each run's final loss appears as a per-step series with mean and spread
    assert "loss per step" in dom and "± 1 std" in dom

    # a key that did not sign them: every run shows FAILED
    assert main(["report", *[s.run_id for s in summaries], "--runs-dir", str(runs_dir), "--key", str(other),
                 "--out", str(tmp_path / "wrong.html")]) == 0
    dom = browse(tmp_path / "wrong.html")
    assert runs_table(dom).count(">FAILED<") == 3 and 'data-ready="1"' in dom


def test_report_trusts_keys_given_with_trust_or_the_old_key_spelling(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, 1)
    _, pub = generate_keypair("ed25519", tmp_path / "keys")
    for flag in ("--trust", "--key"):
        page = tmp_path / f"{flag[2:]}.html"
        assert main(["report", "--experiment", "fake", "--runs-dir", str(runs), flag, str(pub), "--out", str(page)]) == 0
        assert "the run has no attestation" in page.read_text()  # verified (and failed): the key was taken
        err = capsys.readouterr().err
        assert ("taken as --trust" in err) == (flag == "--key")


def html_text(value: str) -> str:
    """How a browser serializes a text node."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def runs_table(dom: str) -> str:
    start = dom.index('<table id="runs">')
    return dom[start:dom.index("</table>", start)]


def test_report_escapes_user_text_and_draws_steps_without_engine(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i in range(3):
        fake_run(runs, i)
    page = tmp_path / "r.html"
    assert main(["report", "--experiment", "fake", "--runs-dir", str(runs), "--out", str(page)]) == 0
    assert "3 run(s)" in capsys.readouterr().out
    text = page.read_text()
    assert EVIL_KEY not in text and EVIL_SCRIPT not in text  # neither raw in HTML nor in the figures' JSON
    dom = browse(page)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body and "pwned" not in body
    assert "data-errors" not in re.search(r"<html[^>]*>", dom).group(0)
    assert html_text(EVIL_KEY) in dom and html_text(EVIL_SCRIPT) in dom
    assert "Not checked" in dom


def test_sweep_means_the_seed_sweep_id_as_in_runs_summary(tmp_path, capsys):
    """--sweep takes what `xrun runs summary SWEEP` takes (the sweep id); --experiment takes a manifest name."""
    from runner.runs.record import RunRecord, SchedulerInfo

    runs = tmp_path / "runs"
    for i in range(3):
        fake_run(runs, i)
    for i in (0, 1):  # two of them are the members of one local seed sweep
        path = next(p for p in runs.iterdir() if p.name.endswith(f"abc{i:03d}"))
        record = RunRecord.load(path / "run.json")
        record.scheduler = SchedulerInfo(backend="local", state="completed", array_index=i, sweep="sw-1234abcd",
                                         seed=i)
        record.save(path / "run.json")
    assert main(["runs", "summary", "sw-1234", "--runs-dir", str(runs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 2
    assert main(["report", "--sweep", "sw-1234", "--runs-dir", str(runs), "--out", str(tmp_path / "s.html"),
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runIds"]) == 2
    assert main(["report", "--experiment", "fake", "--runs-dir", str(runs), "--out", str(tmp_path / "e.html"),
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runIds"]) == 3


@pytest.mark.parametrize("args, words", [
    ([], "--sweep SWEEP_ID or --experiment NAME"),
    (["--experiment", "nope"], "no finished run of experiment 'nope'"),
    (["--sweep", "nope"], "no run or sweep 'nope'"),
    (["nosuchrun"], "no run or sweep 'nosuchrun'"),
    (["--experiment", "fake", "--out", "missing/dir/r.html"], "does not exist"),
])
def test_report_usage_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, args, words):
    runs = tmp_path / "runs"
    fake_run(runs, 1)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--runs-dir", str(runs), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not list(tmp_path.glob("*.html")) and not list(tmp_path.glob(".*.tmp"))


def test_provenance_graph_counts_the_wheels_it_does_not_draw_and_sends_data_to_the_run(tmp_path):
    from runner.report.html import MAX_WHEELS_SHOWN, _inputs, _provenance_svg, collect
    from runner.runs.store import load_run

    fake_run(tmp_path, 1)
    [run] = collect([load_run(next(tmp_path.iterdir()))], [])
    deps = {"base-image": {"digest": {"sha256": "1" * 64}}, "image": {"digest": {"sha256": "2" * 64}},
            "code": {"digest": {"sha256": "3" * 64}}, "data/<b>iris</b>": {"digest": {"md5": "4" * 32}},
            **{f"wheel/pkg{i}": {"digest": {"sha256": f"{i:064d}"}} for i in range(MAX_WHEELS_SHOWN + 4)}}
    inputs = _inputs(deps)
    assert {(i.kind, i.name) for i in inputs} >= {("base image", "base-image"), ("data", "<b>iris</b>"), ("code", "code")}
    assert ("data", "<b>iris</b>", "md5:" + "4" * 32) in {(i.kind, i.name, i.digest) for i in inputs}
    svg = _provenance_svg([dataclasses.replace(run, inputs=inputs)])
    assert "+4 more wheels" in svg and svg.count("<title>wheel: ") == MAX_WHEELS_SHOWN + 1
    assert "&lt;b&gt;iris&lt;/b&gt;" in svg and "<b>" not in svg
    # base, code, the wheels and "+N more" → image; data → run (mounted, not built in); image → run; run → output
    assert svg.count('stroke-width="1.2"') == 2 + MAX_WHEELS_SHOWN + 1 + 1 + 1 + 1


def test_report_of_a_200_member_slurm_sweep_stays_small_ordered_and_readable(tmp_path):
    # Size and structure only; the time to open it is measured by bench/bench_report.py.
    import statistics

    from sweepruns import BUILDER, SWEEP, write_sweep

    write_sweep(tmp_path / "runs", 200)
    page = tmp_path / "r.html"
    assert main(["report", "--sweep", SWEEP, "--runs-dir", str(tmp_path / "runs"), "--out", str(page)]) == 0
    assert page.stat().st_size < 6_000_000
    dom = browse(page)
    assert 'data-ready="1"' in re.search(r"<body([^>]*)>", dom).group(1)
    assert "data-errors" not in re.search(r"<html[^>]*>", dom).group(0)
    table = runs_table(dom)
    ids = re.findall(rf"<code>{SWEEP}-(\d+)</code>", table)
    assert ids == [str(i) for i in range(1, 201)]  # 1, 2, …, 10, 11: not 1, 10, 100, 101
    assert table.count(f"<code>{BUILDER}</code>") == 200 and "slurm 4242_0 on hpc-test (completed)" in table
    assert "<td>gpu01</td>" in table
    # The base's 100 Debian packages are one node in the graph, listed (folded) under it.
    start = dom.index('<svg id="provenance"')
    svg = dom[start:dom.index("</svg>", start)]
    assert "100 Debian packages" in svg and "<title>deb: lib" not in svg
    assert len(re.findall(r"<tr><td><code>lib\d+</code>", dom[dom.index('<details id="debs">'):])) == 100
    # 200 runs of one image are one node: the graph stays a few boxes high.
    assert "200 runs · seeds 1-200" in svg and svg.count("<title>run: ") == 1
    assert float(re.search(r'<svg id="provenance"[^>]*height="(\d+)"', dom).group(1)) < 800
    stats = dom[dom.index('<table id="statistics">'):]
    stats = stats[:stats.index("</table>")]
    accs = [0.9 + (seed % 7) / 1000 for seed in range(1, 201)]
    acc_row = re.search(r"<tr><th>acc</th>(.*?)</tr>", stats).group(1)
    cells = [float(v) for v in re.findall(r"<span class=\"?num\"?>([^<]+)</span>", acc_row)]
    assert cells == pytest.approx([200, statistics.fmean(accs), statistics.stdev(accs), min(accs), max(accs)],
                                  rel=1e-5)
