"""`xrun report`: one self-contained HTML page about runs (no network needed to open it).

The runs side by side, metric plots (per run, across runs with mean and spread, per step), the
outputs and their digests, the inputs as a provenance graph (inline SVG), and the verification of
each attestation when keys are given. Charts are plotly figures drawn by plotly.js, which is inlined
once. Everything that comes from a run (names, metric keys, paths) is escaped: in HTML through
`html.escape`, in the figures' JSON by escaping `<`, `>` and `&`, so no value can close a tag.
"""

from __future__ import annotations

import html
import json
import statistics
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import __version__
from runner.errors import EnvironmentProblem, UsageError, XrunError
from runner.report.views import seed_list
from runner.resources import resource_dir
from runner.rundir import write_atomic
from runner.runs.record import RunRecord, RunStatus
from runner.runs.store import RunInfo, find_runs, list_runs, load_run
from runner.runs.sweep import MetricSummary, sweep_members
from runner.wire import fields_to_wire

MAX_WHEELS_SHOWN = 6  # a lock of hundreds of wheels would drown the graph: the rest are counted
MAX_RUNS_DRAWN = 12  # more runs of one image are drawn as one node (a 200-member sweep), listed in the table


@dataclass(frozen=True)
class Input:
    """One resolved dependency of a run, as its attestation records it."""

    kind: str  # data, base image, wheel, code, lockfile, deb, reproduced
    name: str
    digest: str  # "sha256:…" (or the first algorithm recorded)


@dataclass(frozen=True)
class ReportRun:
    """What the report shows of one run: its record, its recorded inputs, its verification."""

    info: RunInfo
    inputs: tuple[Input, ...]
    verified: bool | None  # None: no --key given
    checks: tuple[str, ...]  # `PASS  name: detail` lines
    builder: str | None = None  # runDetails.builder.id of its attestation

    @property
    def record(self) -> RunRecord:
        """The run's run.json."""
        return self.info.record

    @property
    def seed(self) -> int | None:
        """The global seed of its plan."""
        return self.info.plan.seed

    @property
    def label(self) -> str:
        """Short name for legends and column heads."""
        return f"seed {self.seed} ·{self.info.run_id[-6:]}" if self.seed is not None else self.info.run_id


@dataclass(frozen=True)
class WrittenReport:
    """What `xrun report` wrote."""

    path: Path
    run_ids: tuple[str, ...]
    size_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return fields_to_wire(self)


def select_runs(runs_dir: Path, refs: list[str], sweeps: list[str], experiments: tuple[str, ...] = ()) -> list[RunInfo]:
    """The runs named (id, sweep id, prefix, path, 'latest'), the members of each seed sweep (by its id, as
    `runs summary` takes it) and every finished run of each experiment (by name)."""
    if not refs and not sweeps and not experiments:
        raise UsageError("name the runs to report: run ids (`xrun runs ls` lists them), --sweep SWEEP_ID or "
                         "--experiment NAME")
    chosen = [run for ref in refs for run in find_runs(runs_dir, ref)]
    for sweep in sweeps:
        chosen += [run for path, _ in sweep_members(runs_dir, sweep) if (run := load_run(path)) is not None]
    everything = list_runs(runs_dir) if experiments else []
    for name in experiments:
        finished = (RunStatus.SUCCEEDED, RunStatus.FAILED)
        members = [r for r in everything if r.record.name == name and r.record.status in finished]
        if not members:
            known = sorted({r.record.name for r in everything})
            raise UsageError(f"--experiment {name}: no finished run of experiment {name!r} under {runs_dir}"
                             + (f"; experiments there: {', '.join(known)}" if known else ""))
        chosen += members
    seen: set[str] = set()
    return [r for r in chosen if not (r.run_id in seen or seen.add(r.run_id))]  # type: ignore[func-returns-value]


def collect(runs: list[RunInfo], keys: list[Path]) -> list[ReportRun]:
    """Read each run's attestation (inputs) and verify it when keys are given."""
    return [_report_run(info, keys) for info in runs]


def write_report(runs_dir: Path, refs: list[str], sweeps: list[str], out: Path, *, keys: list[Path],
                 experiments: tuple[str, ...] = ()) -> WrittenReport:
    """Select, collect, render and write the report atomically (a failed write leaves nothing)."""
    started = time.monotonic()
    if not out.parent.absolute().is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere")
    try:
        import plotly  # noqa: F401 - a dependency of xrun; an installation without it says so before any work
    except ImportError:
        raise EnvironmentProblem("xrun report draws its plots with plotly, which this installation lacks: "
                                 "pip install 'plotly>=5.20' (or reinstall xrun with its dependencies)") from None
    runs = natural_order(collect(select_runs(runs_dir, refs, sweeps, experiments), keys))
    data = render(runs, title=_title(runs, sweeps)).encode("utf-8")
    write_atomic(out, data)
    return WrittenReport(path=out, run_ids=tuple(r.info.run_id for r in runs), size_bytes=len(data),
                         seconds=round(time.monotonic() - started, 3))


# --- reading ---------------------------------------------------------------------------------------


def _report_run(info: RunInfo, keys: list[Path]) -> ReportRun:
    from runner.attest.recorded import RecordedRun

    attestation = info.path / info.record.attestation if info.record.attestation else None
    statement: dict[str, Any] = {}
    verified: bool | None = None
    checks: tuple[str, ...] = ()
    if attestation is not None and attestation.is_file():
        if keys:
            from runner.attest import verify_attestation

            verdict = verify_attestation(attestation, keys, [])
            verified, checks = verdict.ok, tuple(c.line() for c in verdict.checks)
            statement = verdict.statement or {}
        if not statement:
            statement = _unverified_statement(attestation)
    elif keys:
        verified, checks = False, ("FAIL  attestation: the run has no attestation",)
    recorded = RecordedRun.from_statement(statement) if statement else None
    return ReportRun(info=info, inputs=_inputs(recorded.dependencies if recorded else {}), verified=verified,
                     checks=checks, builder=recorded.builder_id if recorded else None)


def natural_order(runs: list[ReportRun]) -> list[ReportRun]:
    """By experiment, then seed as a number (1, 2, …, 10, 11, not 1, 10, 11, 2), then start time."""
    return sorted(runs, key=lambda r: (r.record.name, r.seed is None, r.seed or 0, r.record.started_on or "",
                                       r.info.run_id))


def _unverified_statement(attestation: Path) -> dict[str, Any]:
    from runner.attest.recorded import read_statement

    try:
        return read_statement(attestation)
    except XrunError:  # an unreadable attestation: the report still shows run.json
        return {}


_KINDS = (("data/", "data"), ("wheel/", "wheel"), ("deb/", "deb"), ("base-image", "base image"), ("code", "code"),
          ("lockfile", "lockfile"), ("attestation/reproduced", "reproduced"))


def _inputs(dependencies: dict[str, dict[str, Any]]) -> tuple[Input, ...]:
    out = []
    for name, dep in dependencies.items():
        kind = next((k for prefix, k in _KINDS if str(name).startswith(prefix)), None)
        if kind is None:
            continue  # "image" is the built image, drawn as its own node
        raw = dep.get("digest")
        digest: dict[str, Any] = raw if isinstance(raw, dict) else {}
        algo = "sha256" if "sha256" in digest else next(iter(digest), "")
        label = str(name).split("/", 1)[1] if "/" in str(name) and kind != "reproduced" else str(name)
        out.append(Input(kind, label, f"{algo}:{digest[algo]}" if algo else str(dep.get("uri", ""))))
    return tuple(out)


# --- rendering -------------------------------------------------------------------------------------


def render(runs: list[ReportRun], *, title: str) -> str:
    """The whole page as text."""
    import plotly.offline

    figures = _figures(runs)
    body = "\n".join([
        _runs_table(runs),
        _statistics(runs),
        _section("Metrics", _plots_html(figures) if figures else "<p class=muted>No run declared a metrics file.</p>"),
        _outputs_table(runs),
        _section("Provenance", _provenance(runs)),
        _verification(runs),
    ])
    template = string.Template((resource_dir("templates") / "report.html").read_text(encoding="utf-8"))
    return template.substitute(
        title=_e(title), version=_e(__version__),
        subtitle=_e(f"{len(runs)} run(s) · generated by xrun {__version__} · "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"),
        body=body, figures=_script_json([{"id": fid, "figure": fig} for fid, fig in figures]),
        plotlyjs=plotly.offline.get_plotlyjs().replace("</script", "<\\/script"),
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, inner: str) -> str:
    return f"<section><h2>{_e(title)}</h2>\n{inner}\n</section>"


def _script_json(value: Any) -> str:
    """JSON that is safe inside <script>: `<`, `>` and `&` only ever appear escaped."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _short(digest: str | None, n: int = 12) -> str:
    if not digest:
        return "<span class=muted>-</span>"
    value = digest.split(":", 1)[-1]
    return f'<code title="{_e(digest)}">{_e(value[:n])}</code>'


def _verdict(run: ReportRun) -> str:
    if run.verified is None:
        signed = run.record.signed
        return "<span class=muted>not checked (no --key)</span>" + ("" if signed else " · <span class=bad>unsigned</span>")
    return "<span class=ok>verified</span>" if run.verified else "<span class=bad>FAILED</span>"


def _runs_table(runs: list[ReportRun]) -> str:
    def row(name: str, cells: list[str]) -> str:
        return f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    head = "<tr><th></th>" + "".join(f"<th>{_e(r.label)}</th>" for r in runs) + "</tr>"
    rows = [
        row("run id", [f"<code>{_e(r.info.run_id)}</code>" for r in runs]),
        row("experiment", [_e(r.record.name) for r in runs]),
        row("status", [f"<span class={'ok' if r.record.status == 'succeeded' else 'bad'}>{_e(r.record.status)}</span>"
                       for r in runs]),
        row("seed", [_e(r.seed if r.seed is not None else "-") for r in runs]),
        row("started", [_e(r.record.started_on or "-") for r in runs]),
        row("duration", [_e(f"{r.info.duration_s:.0f} s" if r.info.duration_s is not None else "-") for r in runs]),
        row("hardware class", [_e(r.record.hardware_class or "-") for r in runs]),
        row("builder", [f"<code>{_e(r.builder)}</code>" if r.builder else _e("-") for r in runs]),
        row("job", [_e(_job(r.record)) for r in runs]),
        row("node", [_e(r.record.scheduler.node if r.record.scheduler and r.record.scheduler.node else "-")
                     for r in runs]),
        row("image", [_short(r.record.image_id) for r in runs]),
        row("plan digest", [_short(r.record.plan_digest) for r in runs]),
        row("manifest digest", [_short(r.record.manifest_sha256) for r in runs]),
        row("attestation", [_verdict(r) for r in runs]),
        row("MLflow run", [_e((r.record.tracking.get("mlflow") or {}).get("externalId")
                              or (r.record.tracking.get("mlflow") or {}).get("state") or "-") for r in runs]),
    ]
    for file, key in _metric_keys(runs):
        rows.append(row(f"{key}" if len({f for f, _ in _metric_keys(runs)}) == 1 else f"{file}: {key}",
                        [_num(r.record.metrics.get(file, {}).get(key)) for r in runs]))
    return _section("Runs", f'<div class=scroll><table id="runs">{head}{"".join(rows)}</table></div>')


def _job(record: RunRecord) -> str:
    sched = record.scheduler
    if sched is None or sched.backend == "local" or not sched.job_ref:
        return "-"
    return f"{sched.backend} {sched.job_ref}" + (f" on {sched.cluster}" if sched.cluster else "") + f" ({sched.state})"


def _statistics(runs: list[ReportRun]) -> str:
    """Mean, sample std, min and max per metric across the runs that have it (a sweep's one-glance answer)."""
    if len(runs) < 2:
        return ""
    rows = []
    keys = _metric_keys(runs)
    for file, key in keys:
        values = [float(v) for r in runs for v in [r.record.metrics.get(file, {}).get(key)]
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not values:
            continue
        stats = MetricSummary.of(key, values)
        name = key if len({f for f, _ in keys}) == 1 else f"{file}: {key}"
        cells = [_num(stats.n), *(_num(x) for x in (stats.mean, stats.std, stats.min, stats.max))]
        rows.append(f"<tr><th>{_e(name)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "<tr><th>metric</th><th>n</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>"
    return _section("Statistics", f'<table id="statistics">{head}{"".join(rows)}</table>'
                                  "<p class=muted>std: the sample standard deviation (n−1).</p>")


def _num(value: Any) -> str:
    if value is None:
        return "<span class=muted>-</span>"
    return f"<span class=num>{_e(f'{value:.6g}' if isinstance(value, float) else value)}</span>"


def _metric_keys(runs: list[ReportRun]) -> list[tuple[str, str]]:
    keys: dict[tuple[str, str], None] = {}
    for r in runs:
        for file, values in r.record.metrics.items():
            for key in values:
                keys[(file, key)] = None
    return list(keys)


def _outputs_table(runs: list[ReportRun]) -> str:
    paths = sorted({p for r in runs for p in r.record.outputs})
    if not paths:
        return _section("Outputs", "<p class=muted>No outputs recorded.</p>")
    head = "<tr><th>output</th>" + "".join(f"<th>{_e(r.label)}</th>" for r in runs) + "<th></th></tr>"
    rows = []
    for path in paths:
        digests = [r.record.outputs.get(path) for r in runs]
        same = len({d for d in digests if d}) == 1 and all(digests)
        note = "<span class=same>identical</span>" if same and len(runs) > 1 else ""
        rows.append(f"<tr><td><code>{_e(path)}</code></td>" + "".join(f"<td>{_short(d, 16)}</td>" for d in digests)
                    + f"<td>{note}</td></tr>")
    return _section("Outputs (sha256)", f'<div class=scroll><table id="outputs">{head}{"".join(rows)}</table></div>')


def _verification(runs: list[ReportRun]) -> str:
    if all(r.verified is None for r in runs):
        return _section("Verification", "<p class=muted>Not checked: pass <code>--trust PUB</code> to verify each "
                                        "attestation.</p>")
    parts = []
    for r in runs:
        checks = "".join(f"<li class={'ok' if line.startswith('PASS') else 'bad'}>{_e(line)}</li>" for line in r.checks)
        parts.append(f"<details{' open' if not r.verified else ''}><summary>{_e(r.label)}: {_verdict(r)}</summary>"
                     f"<ul class=mono>{checks}</ul></details>")
    return _section("Verification", "\n".join(parts))


# --- figures ---------------------------------------------------------------------------------------


def _figures(runs: list[ReportRun]) -> list[tuple[str, dict[str, Any]]]:
    """(div id, plotly figure as plain data): final values across runs, then per-step series."""
    import plotly.graph_objects as go

    out: list[tuple[str, dict[str, Any]]] = []
    labels = [r.label for r in runs]
    # A large sweep on a numeric seed axis: 200 category labels would be an unreadable band of text.
    by_seed = len(runs) > MAX_RUNS_DRAWN and all(r.seed is not None for r in runs)
    for file, key in _metric_keys(runs):
        values = [r.record.metrics.get(file, {}).get(key) for r in runs]
        present = [float(v) for v in values if isinstance(v, (int, float))]
        fig = go.Figure(go.Scatter(x=[r.seed for r in runs] if by_seed else labels, y=values, name=key,
                                   mode="markers", text=labels if by_seed else None,
                                   marker={"color": "#2f5bd3", "size": 6 if by_seed else 11}))
        if len(present) > 1:
            mean, spread = statistics.fmean(present), statistics.stdev(present)
            fig.add_hline(y=mean, line_dash="dash", line_color="#b42318",
                          annotation_text=f"mean {mean:.4g} ± {spread:.2g}")
            fig.add_hrect(y0=mean - spread, y1=mean + spread, fillcolor="#b42318", opacity=0.08, line_width=0)
        _layout(fig, f"{key} (final, {len(present)} run{'s' if len(present) != 1 else ''})",
                "seed" if by_seed else "run", key)
        out.append((f"fig-{len(out)}", fig.to_plotly_json()))
    series_keys: dict[tuple[str, str], None] = {}
    for r in runs:
        for file, series in r.record.metric_steps.items():
            for key in series:
                series_keys[(file, key)] = None
    for file, key in series_keys:
        fig = go.Figure()
        lines = [(r.label, r.record.metric_steps.get(file, {}).get(key) or []) for r in runs]
        if len(runs) > MAX_RUNS_DRAWN:
            # A trace (and a legend entry) per run costs the browser seconds at 200 runs: one trace, runs
            # separated by gaps, drawn faintly under the mean band.
            xs: list[float | None] = []
            ys: list[float | None] = []
            for _, pairs in lines:
                xs += [p[0] for p in pairs] + [None]
                ys += [p[1] for p in pairs] + [None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{len(runs)} runs", hoverinfo="skip",
                                     line={"color": "rgba(47,91,211,0.25)", "width": 1}))
        else:
            for label, pairs in lines:
                if pairs:
                    fig.add_trace(go.Scatter(x=[p[0] for p in pairs], y=[p[1] for p in pairs], mode="lines",
                                             name=label, opacity=0.55 if len(runs) > 1 else 1))
        band = _mean_band([dict((p[0], p[1]) for p in pairs) for _, pairs in lines if pairs])
        if band:
            steps, center, low, high = band
            fig.add_trace(go.Scatter(x=steps + steps[::-1], y=high + low[::-1], fill="toself", hoverinfo="skip",
                                     mode="lines", fillcolor="rgba(180,35,24,0.12)", line={"width": 0}, name="± 1 std"))
            fig.add_trace(go.Scatter(x=steps, y=center, mode="lines", name="mean", line={"color": "#b42318", "width": 3}))
        _layout(fig, f"{key} per step", "step", key)
        out.append((f"fig-{len(out)}", fig.to_plotly_json()))
    return [(fid, _plain(fig)) for fid, fig in out]


def _mean_band(series: list[dict[float, float]]) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """Mean and mean ± std at the steps every run has (None for fewer than two runs)."""
    if len(series) < 2:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if not steps:
        return None
    mean = [statistics.fmean(s[x] for s in series) for x in steps]
    std = [statistics.stdev([s[x] for s in series]) for x in steps]
    return steps, mean, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]


def _layout(fig: Any, title: str, x: str, y: str) -> None:
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=330, margin={"l": 50, "r": 20, "t": 50, "b": 60},
                      xaxis_title=x, yaxis_title=y, template="plotly_white", legend={"font": {"size": 10}})


def _plain(value: Any) -> Any:
    """Plotly's figure dict as JSON data (no numpy, no NaN)."""
    import plotly.io

    return json.loads(plotly.io.to_json(value, validate=False).replace("NaN", "null"))


def _plots_html(figures: list[tuple[str, dict[str, Any]]]) -> str:
    return "<div class=plots>" + "".join(f'<div class=plot id="{_e(fid)}"></div>' for fid, _ in figures) + "</div>"


# --- provenance graph ------------------------------------------------------------------------------


def _provenance(runs: list[ReportRun]) -> str:
    """The graph, and the Debian packages of the base image listed under it (folded away until opened)."""
    debs = sorted({(i.name, i.digest) for r in runs for i in r.inputs if i.kind == "deb"})
    listing = ""
    if debs:
        rows = "".join(f"<tr><td><code>{_e(name)}</code></td><td><code>{_e(ref)}</code></td></tr>" for name, ref in debs)
        listing = (f'<details id="debs"><summary>{len(debs)} Debian packages of the base image</summary>'
                   f'<div class=scroll><table><tr><th>package</th><th>recorded as</th></tr>{rows}</table></div>'
                   "</details>")
    return _provenance_svg(runs) + listing


def _run_nodes(runs: list[ReportRun], images: list[str]) -> tuple[list[tuple[str, str, str]], list[int]]:
    """The RUNS column and, per run, its node: each run, or one node per image past MAX_RUNS_DRAWN runs."""
    if len(runs) <= MAX_RUNS_DRAWN:
        return [("run", r.label, r.info.run_id) for r in runs], list(range(len(runs)))
    nodes = []
    for image in images:
        members = [r for r in runs if (r.record.image_id or "?") == image]
        seeds = [r.seed for r in members if r.seed is not None]
        nodes.append(("run", f"{len(members)} runs" + (f" · seeds {seed_list(seeds)}" if seeds else ""), ""))
    return nodes, [images.index(r.record.image_id or "?") for r in runs]


def _provenance_svg(runs: list[ReportRun]) -> str:
    """Inputs → image → run → outputs, laid out in four columns as inline SVG."""
    inputs: dict[tuple[str, str, str], set[str]] = {}  # (kind, name, digest) → run ids using it
    for r in runs:
        for item in r.inputs:
            inputs.setdefault((item.kind, item.name, item.digest), set()).add(r.info.run_id)
    order = {"base image": 0, "lockfile": 1, "wheel": 2, "deb": 3, "code": 4, "data": 5, "reproduced": 6}
    ordered = sorted(inputs, key=lambda k: (order.get(k[0], 9), k[1], k[2]))
    wheels = [k for k in ordered if k[0] == "wheel"]
    debs = [k for k in ordered if k[0] == "deb"]
    # A bootstrapped base is ~100 packages: one node, listed under the graph (_provenance).
    shown = [k for k in ordered if k[0] not in ("wheel", "deb")] + wheels[:MAX_WHEELS_SHOWN]
    if debs:
        shown.append(("deb", f"{len(debs)} Debian packages", ""))
    shown.sort(key=lambda k: (order.get(k[0], 9), k[1], k[2]))
    images = sorted({r.record.image_id or "?" for r in runs})
    outputs = sorted({p for r in runs for p in r.record.outputs})
    hidden = len(wheels) - MAX_WHEELS_SHOWN
    run_nodes, node_of = _run_nodes(runs, images)
    columns: list[list[tuple[str, str, str]]] = [
        [(k[0], k[1], k[2]) for k in shown] + ([("wheel", f"+{hidden} more wheels", "")] if hidden > 0 else []),
        [("image", "image", i) for i in images],
        run_nodes,
        [("output", p, "") for p in outputs],
    ]
    width, box_w, box_h, gap = 1180, 250, 38, 10
    xs = [10, 330, 620, 910]
    height = max(len(c) for c in columns) * (box_h + gap) + 20
    pos: dict[tuple[int, int], tuple[float, float]] = {}
    parts = []
    for ci, column in enumerate(columns):
        offset = (height - len(column) * (box_h + gap)) / 2
        for ni, (kind, name, digest) in enumerate(column):
            x, y = xs[ci], offset + ni * (box_h + gap)
            pos[(ci, ni)] = (x, y)
            fill = {"data": "#e8f1ff", "wheel": "#f1ecff", "base image": "#fff4e0", "code": "#e9f7ee",
                    "image": "#fff4e0", "run": "#eef0f4", "output": "#e9f7ee"}.get(kind, "#f4f4f4")
            tip = f"{kind}: {name}" + (f"\n{digest}" if digest else "")
            detail = digest.split(":", 1)[-1][:12] if digest else ""
            parts.append(f'<g><title>{_e(tip)}</title><rect x="{x}" y="{y:.0f}" width="{box_w}" height="{box_h}" '
                         f'rx="6" fill="{fill}" stroke="#9aa3b2"/>'
                         f'<text x="{x + 8}" y="{y + 15:.0f}">{_e(_clip(name, 34))}</text>'
                         f'<text class="kind" x="{x + 8}" y="{y + 30:.0f}">{_e(kind)}'
                         f'{" · " + _e(detail) if detail else ""}</text></g>')
    edges: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    run_index = {r.info.run_id: node_of[i] for i, r in enumerate(runs)}
    image_index = {img: i for i, img in enumerate(images)}
    for ni, (kind, name, digest) in enumerate(columns[0]):
        users = inputs.get((kind, name, digest), set()) if digest or kind != "wheel" else set()
        if kind in ("data", "reproduced"):  # data is mounted into the run, not built into the image
            edges |= {((0, ni), (2, run_index[u])) for u in users}
        else:
            targets = {image_index[r.record.image_id or "?"] for r in runs if r.info.run_id in users} \
                if users else set(image_index.values())
            edges |= {((0, ni), (1, t)) for t in targets}
    for ri, r in enumerate(runs):
        edges.add(((1, image_index[r.record.image_id or "?"]), (2, node_of[ri])))
        edges |= {((2, node_of[ri]), (3, outputs.index(p))) for p in r.record.outputs}
    for a, b in sorted(edges):
        (x1, y1), (x2, y2) = pos[a], pos[b]
        sx, sy, ex, ey = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
        mid = (sx + ex) / 2
        parts.insert(0, f'<path d="M{sx:.0f},{sy:.0f} C{mid:.0f},{sy:.0f} {mid:.0f},{ey:.0f} {ex:.0f},{ey:.0f}" '
                        f'fill="none" stroke="#9aa3b2" stroke-width="1.2" marker-end="url(#arrow)"/>')
    defs = ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#9aa3b2"/></marker></defs>')
    heads = "".join(f'<text x="{x}" y="12" class="kind">{t}</text>'
                    for x, t in zip(xs, ("INPUTS", "IMAGE", "RUNS", "OUTPUTS")))
    return (f'<div class=scroll><svg id="provenance" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height + 20:.0f}" viewBox="0 -8 {width} {height + 20:.0f}">{defs}{heads}'
            f'<g transform="translate(0,12)">{"".join(parts)}</g></svg></div>')


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _title(runs: list[ReportRun], sweeps: list[str]) -> str:
    names = sorted({r.record.name for r in runs})
    what = f"sweep {', '.join(sweeps)}" if sweeps else ", ".join(names)
    return f"xrun report: {what}"


