"""The text renderer: what each command prints for a person, from the typed results of the library."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.report.views import seed_list
from runner.rundir import NODE_STATEMENT

if TYPE_CHECKING:
    from runner.build.depslayer import DepsRecord
    from runner.build.export import Published
    from runner.codetree import CodeSummary
    from runner.fetch import CacheEntry, FetchedData
    from runner.report.html import WrittenReport
    from runner.report.views import HardwareView, KeyPair, Validation
    from runner.reproduce import Report
    from runner.runs.record import RunRecord
    from runner.runs.store import RunInfo
    from runner.stages import RunSummary
    from runner.backends.interface import SubmitResult, SubmittedRun
    from runner.runs.sweep import SweepSummary
    from runner.trackers.track import SyncResult


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces, the header first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)).rstrip() for r in [header, *rows])


def number(value: float | None) -> str:
    """6 significant digits, '-' for none."""
    return "-" if value is None else f"{value:.6g}"


def ago(epoch: float, now: float | None = None) -> str:
    """'3h ago' style age of an epoch time."""
    seconds = max(0.0, (time.time() if now is None else now) - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def run_summary(summary: RunSummary) -> str:
    """`xrun run`: the run, its image, outputs, metrics and attestation."""
    lines = [f"run {summary.run_id}: {summary.status}", f"  run dir     {summary.run_dir}",
             f"  image       {summary.image_id}"]
    lines += [f"  output      {path}  sha256:{digest[:16]}" for path, digest in summary.outputs.items()]
    for path, values in summary.metrics.items():
        shown = ", ".join(f"{k}={v:.6g}" for k, v in list(values.items())[:6])
        lines.append(f"  metrics     {path}: {shown}")
    signed = f"signed, keyid {summary.keyid}" if summary.signed else "UNSIGNED"
    lines.append(f"  attestation {summary.attestation} ({signed})")
    for tracker, state in summary.tracking.items():
        lines.append(f"  {tracker:<11} {state.get('externalId') or state.get('state')} ({state.get('uri')})")
    return "\n".join(lines)


def plan_summary(data: dict[str, Any], digest: str, code_tree: CodeSummary) -> str:
    """`xrun plan`: a human-readable summary of a plan's JSON, with the code tree's size and biggest files."""
    from runner.progress import human_bytes

    img = data["image"]
    base = img["base"]["reference"] if img["base"] else f"bootstrap {img['bootstrap']['suite']}: " + ", ".join(
        img["bootstrap"]["packages"])
    lines = [f"plan {digest[:12]}  {data['name']}", f"  image      {base}"]
    if data["lockfile"]:
        lk = data["lockfile"]
        lines.append(f"  lockfile   {lk['path']} ({lk['format']}, {len(lk['packages'])} packages, "
                     f"sha256:{lk['sha256'][:12]})")
    code = data["code"]
    git = f", git {code['gitCommit'][:12]}{' dirty' if code['gitDirty'] else ''}" if code["gitCommit"] else ""
    source = ", from git" if code.get("from") == "git" else ""
    lines.append(f"  code       {code['path']} ({code['files']} files, {human_bytes(code_tree.size)}, "
                 f"{code['digest'][:19]}{git}{source})")
    if code_tree.biggest:
        lines.append("             biggest: " + ", ".join(f"{f.path} {human_bytes(f.size)}" for f in code_tree.biggest))
    if code_tree.left_out:
        lines.append("             left out: " + ", ".join(code_tree.left_out))
    for d in data["data"]:
        if "source" in d:
            from runner.fetch.sources.render import plan_line

            lines.append(f"  data       {d['name']}: {plan_line(d['source'])} → {d['containerPath']}")
            continue
        algo, hexd = next(iter(d["digests"].items()))
        lines.append(f"  data       {d['name']}: {d['uri']} → {d['containerPath']} ({algo}:{hexd[:12]})")
    hw = data["hardware"]
    lines.append(f"  hardware   {hw['name']}: {hw['description']}")
    lines.append(f"  seeds      global={data['seeds']['global']} apply={data['seeds']['apply']}")
    lines.append(f"  command    {' '.join(data['run']['command'])}")
    timeout = data["run"]["timeoutSeconds"]
    lines.append(f"  timeout    {f'{timeout}s' if timeout else 'none'}")
    lines += [f"  output     /outputs/{o['path']}{' (metrics)' if o['metrics'] else ''}" for o in data["outputs"]]
    return "\n".join(lines)


def validated(results: Iterable[Validation]) -> str:
    """`xrun validate`: one line per valid manifest (the invalid ones went to stderr as errors)."""
    return "\n".join(f"{r.manifest}: valid ({r.name}, sha256:{(r.sha256 or '')[:12]})" for r in results if r.valid)


def hardware_catalog(view: HardwareView) -> str:
    """`xrun hardware`: the classes, whether this host fits each, and the host."""
    host = view.host
    rows = [[c.name, c.cpus, c.memory_gib, c.gpus, c.gpu_model or "-", "yes" if view.fits[c.name] else "no",
             c.description] for c in view.classes.values()]
    gpus = ", ".join(g.name for g in host.gpus) or "none"
    return (table(rows, ["CLASS", "CPUS", "MEM GiB", "GPUS", "GPU MODEL", "FITS HOST", "DESCRIPTION"])
            + f"\n\nhost: {host.cpu_count} × {host.cpu_model}, {host.memory_bytes / 2**30:.1f} GiB, GPUs: {gpus}")


def built(out: Published) -> tuple[str, str]:
    """`xrun build`: the image ID (stdout) and what happened to it (stderr)."""
    image = out.image
    notes = [f"{image.tag} ({'cached: nothing built' if image.cached else 'built'}, {len(image.wheels)} wheels)"]
    if out.oci_layout:
        notes.append(f"OCI layout {out.oci_layout} (manifest {out.manifest_digest})")
    if image.pushed_to:
        notes.append(f"pushed {image.pushed_to}@{image.manifest_digest}")
    return image.id, "\n".join(notes)


def fetched(items: Sequence[FetchedData]) -> str:
    """`xrun fetch`: one row per data item."""
    rows = [[i.name, f"{i.algorithm}:{i.hexdigest[:12]}", i.size, "hit" if i.cache_hit else "fetched",
             i.container_path] for i in items]
    return table(rows, ["DATA", "DIGEST", "BYTES", "CACHE", "IN RUN"]) if rows else "no data items"


def cache_entries(root: Path, entries: Sequence[CacheEntry], layers: Sequence[DepsRecord] = ()) -> str:
    """`xrun cache ls`: the entries, then the dependency layers built here (their bytes are in the engine)."""
    rows = [[e.kind, e.digest[:23], e.size, e.files if e.files is not None else "-", ago(e.last_used)]
            for e in entries]
    out = table(rows, ["KIND", "DIGEST", "BYTES", "FILES", "LAST USED"]) if rows else f"cache {root} is empty"
    if layers:
        out += "\n\n" + table([[r.diff_id[:23], r.size, len(r.images)] for r in layers],
                               ["DEPENDENCY LAYER (in the engine)", "BYTES", "IMAGES"])
    return out


def cache_verified(results: Sequence[Any]) -> str:
    """`xrun cache verify`: OK/BAD per entry and a count."""
    lines = [f"{'OK  ' if r.ok else 'BAD '} {r.entry.digest}" + (f"  {'; '.join(r.problems)}" if r.problems else "")
             + ("  (removed)" if r.removed else "") for r in results]
    bad = sum(1 for r in results if not r.ok)
    lines.append(f"{len(results) - bad} of {len(results)} entries intact")
    return "\n".join(lines)


def cache_collected(removed: Sequence[Any], dry_run: bool) -> str:
    """`xrun cache gc`: what was (or would be) removed."""
    lines = [f"{'would remove' if dry_run else 'removed'} {r.kind} {r.digest or r.path} ({r.size} bytes)"
             for r in removed]
    lines.append(f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} {'to remove' if dry_run else 'removed'}, "
                 f"{sum(r.size for r in removed)} bytes")
    return "\n".join(lines)


def keypair(pair: KeyPair) -> str:
    """`xrun keygen`: the files written and the keyid."""
    return (f"wrote {pair.key} (private, mode 0600{', encrypted' if pair.encrypted else ''}) and {pair.pub}\n"
            f"keyid {pair.keyid}")


def reproduction(report: Report) -> str:
    """`xrun reproduce`: one row per output, metric tables, changed inputs, the verdict."""
    rows = [[r.path, r.state.upper(), (r.recorded or "-")[:16], (r.now or "-")[:16]] for r in report.outputs]
    lines = [table(rows, ["OUTPUT", "STATE", "RECORDED", "NOW"])]
    for r in report.outputs:
        if r.metrics:
            lines.append(f"\nmetrics {r.path}:")
            mrows = [[m.key, number(m.recorded), number(m.now), number(m.abs_diff), number(m.rel_diff),
                      "ok" if m.ok else "DIFF"] for m in r.metrics]
            lines.append(table(mrows, ["KEY", "RECORDED", "NOW", "ABS DIFF", "REL DIFF", ""]))
    if report.changes and not report.reproduced:
        lines.append("\nrecorded inputs that changed:")
        for c in report.changes:
            detail = f": {json.dumps(c.recorded, default=str)} → {json.dumps(c.now, default=str)}" if (
                c.recorded is not None or c.now is not None) else ""
            lines.append(f"  {c.name}{detail}")
    verdict = "REPRODUCED" if report.reproduced else "NOT REPRODUCED"
    lines.append(f"\n{verdict} (new run {report.run_id} in {report.run_dir})")
    lines += [f"  {note}" for note in report.notes]
    return "\n".join(lines)


def runs_list(runs: Sequence[RunInfo], runs_dir: Path) -> str:
    """`xrun runs ls`: one row per run."""
    rows = []
    for r in runs:
        rec = r.record
        metrics = "; ".join(f"{k}={v:.4g}" for values in rec.metrics.values() for k, v in list(values.items())[:2])
        digests = " ".join(f"{p}:{d[:8]}" for p, d in list(rec.outputs.items())[:2])
        rows.append([r.run_id, rec.name or "-", run_status(rec), rec.started_on or "-",
                     f"{r.duration_s:.0f}s" if r.duration_s is not None else "-", metrics or "-", digests or "-"])
    return (table(rows, ["RUN", "NAME", "STATUS", "STARTED", "DURATION", "METRICS", "OUTPUTS"]) if rows
            else f"no runs under {runs_dir}")


def run_status(rec: RunRecord) -> str:
    """The STATUS cell: the run's status, and the scheduler's word where it adds to it."""
    sched = rec.scheduler
    if sched is None or sched.backend == "local":
        return str(rec.status)
    if rec.status.unfinished:
        return f"{rec.status} ({sched.state})"
    if not sched.final:
        # The node has finished the run; a scheduler word older than that ("running") says nothing more.
        # Until collected, the record names only the node's unsigned statement: no attestation yet.
        collected = bool(rec.attestation) and rec.attestation != NODE_STATEMENT
        return str(rec.status) if collected else f"{rec.status} (not collected)"
    return f"{rec.status} ({sched.state})"


def run_details(run: RunInfo) -> str:
    """`xrun runs show`."""
    record = run.record.to_json()
    lines = [f"run {run.run_id} ({run.path})"]
    lines += [f"  {key:<12} {record.get(key, '-')}" for key in
              ("name", "status", "startedOn", "finishedOn", "exitCode", "imageId", "planDigest", "hardwareClass")]
    lines += [f"  output       {path} sha256:{digest}" for path, digest in run.record.outputs.items()]
    lines += [f"  metrics      {path}: " + ", ".join(f"{k}={v}" for k, v in values.items())
              for path, values in run.record.metrics.items()]
    if run.record.error:
        lines.append(f"  error        {run.record.error}")
    return "\n".join(lines)


def runs_diff(a: RunInfo, b: RunInfo, diff: dict[str, Any]) -> str:
    """`xrun runs diff`: the fields, outputs and metrics that differ."""
    lines = [f"a = {a.run_id}", f"b = {b.run_id}"]
    lines += [f"{section} fields that differ: {', '.join(diff[section])}" for section in ("manifest", "plan", "host")
              if diff[section]]
    lines += [f"output {path}: {str(d['a'])[:16]} → {str(d['b'])[:16]}" for path, d in diff["outputs"].items()]
    lines += [f"metric {key}: {d['a']} → {d['b']}" for key, d in diff["metrics"].items()]
    if not any(diff[k] for k in ("manifest", "plan", "host", "outputs", "metrics")):
        lines.append("no differences")
    return "\n".join(lines)


def synced(results: Sequence[SyncResult]) -> str:
    """`xrun runs sync`: one line per run sent (or still pending)."""
    lines = [f"run {r.run_id}: {r.state}" + (f" (MLflow run {r.mlflow_run_id}, {r.uri})" if r.mlflow_run_id else "")
             for r in results]
    return "\n".join(lines) if lines else "nothing to send: no run is pending"


def report_written(written: WrittenReport) -> str:
    """`xrun report`: the page written."""
    return f"{written.path}: {len(written.run_ids)} run(s), {written.size_bytes // 1024} KiB"


def submitted(result: SubmitResult) -> str:
    """`xrun submit`: the backend, job, image and one line per run."""
    head = f"submitted to {result.backend}" + (f" as job {result.job_id}" if result.job_id else "")
    if result.sweep:
        # Rendered Jobs are no runs xrun follows: their seeds come with the result, not with result.runs.
        seeds = result.seeds or tuple(r.seed for r in result.runs if r.seed is not None)
        head += f", sweep {result.sweep}" + (f" ({len(seeds)} members: seeds {seed_list(seeds)})" if seeds else "")
    lines = [head, f"  image  {result.image_reference or result.image_id}"]
    for path in result.rendered:
        lines.append(f"  wrote  {path}")
    for r in result.runs:
        seed = f" seed {r.seed}" if r.seed is not None else ""
        lines.append(f"  run    {r.run_id or '-'}{seed}  {r.state}" + (f"  {r.attestation}" if r.attestation else "")
                     + (f"  ({r.error})" if r.error else ""))
    return "\n".join(lines)


def collected(result: SubmittedRun) -> str:
    """`xrun collect` / `xrun wait`: the run's state and its attestation (or error)."""
    return f"run {result.run_id}: {result.state}" + (
        f", attestation {result.attestation}" if result.attestation
        else f", REFUSED: {result.error}" if result.refused else f" ({result.error})" if result.error else "")


def cancelled(record: RunRecord) -> str:
    """`xrun cancel`."""
    job = record.scheduler.job_ref if record.scheduler else "?"
    return f"run {record.run_id}: cancel requested for job {job}"


def sweep_summary(summary: SweepSummary) -> str:
    """`xrun runs summary`: members, one row per metric key, the failed members."""
    failed = [f.seed for f in summary.failed if f.seed is not None]
    lines = [f"sweep {summary.sweep}: {summary.succeeded} of {summary.members} members succeeded"
             + (f", {len(summary.failed)} failed (seeds {seed_list(failed)})" if failed else "")
             + (f", {summary.unfinished} still pending or running" if summary.unfinished else "")
             + (f"; seeds {seed_list(summary.seeds)}" if summary.seeds else "")]
    rows = [[m.key, m.n, number(m.mean), number(m.std), number(m.min), number(m.max)] for m in summary.metrics]
    lines.append(table(rows, ["METRIC", "N", "MEAN", "STD", "MIN", "MAX"]))
    lines += [f"failed: {f.run_id} (seed {f.seed}, {f.state}): {f.error or '-'}" for f in summary.failed]
    return "\n".join(lines)

