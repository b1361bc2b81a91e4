"""`xrun submit`: the submitting side of cluster runs and seed sweeps — prepare, distribute, hand over.

Submitting does what `xrun run` does up to the run stage, on this host: validate, plan, fetch and
verify the data into the shared cache, build the image (an unchanged plan builds nothing), and make
the image reachable from the nodes (pushed by digest to --registry, or saved once into the shared
directory: runner/build/distribute.py). Then the chosen backend (runner/backends/) takes the
prepared experiment: one job, a job array per seed sweep, rendered Jobs, or local runs. Afterwards
each run is followed through its backend's handle (`xrun wait|collect|cancel|logs`); `collect` checks
the node's statement (runner/collect.py) and signs it here: the key never reaches a node.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runner.backends import attach, get_backend
from runner.backends.interface import (POLL_MAX_S, POLL_S, Distribution, Handle, Prepared, SubmitOptions,
                                       SubmitResult, SubmittedRun, run_state)
from runner.errors import EnvironmentProblem, IntegrityError, UsageError
from runner.runs.record import RunRecord

if TYPE_CHECKING:
    from runner.attest.keys import Signer

__all__ = ["MAX_SEEDS", "SubmitOptions", "SubmitResult", "SubmittedRun", "cancel_run", "cancel_runs", "collect",
           "collect_runs", "load_signer_for", "parse_seeds", "prepare", "shared_cache", "submit", "wait_run", "wait_runs"]

MAX_SEEDS = 10_000


def parse_seeds(text: str) -> tuple[int, ...]:
    """'1-10', '1,5,9' or a mix ('1-3,7') → the seeds in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part.lstrip("-")[1:] or (part.count("-") == 1 and not part.startswith("-")):
                low, high = (int(x) for x in part.split("-", 1))
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UsageError(f"--seeds {text!r}: give a range like 1-10 or a list like 1,5,9 (integers)") from None
        if len(seeds) > MAX_SEEDS:
            raise UsageError(f"--seeds {text!r}: more than {MAX_SEEDS} seeds")
    if any(s < 0 for s in seeds):
        raise UsageError(f"--seeds {text!r}: seeds are non-negative integers")
    return tuple(dict.fromkeys(seeds))


def submit(manifest: Path, options: SubmitOptions) -> SubmitResult:
    """Submit the experiment (one run, or one per seed) to the chosen backend; with options.wait, collect each run."""
    backend = get_backend(options.backend)
    backend.check(options)
    result = backend.submit(prepare(manifest, options, backend.distribution))
    # A backend that runs here (local) returns its runs finished and signed: nothing to wait for or collect, and
    # the key is not loaded (nor its password asked for) a second time.
    if not options.wait or backend.distribution is Distribution.NONE:
        return result
    followed = [r for r in result.runs if r.run_id]  # a member without a run directory has nothing to collect
    done = {r.run_dir: r for r in wait_runs([r.run_dir for r in followed], key=options.run.key,
                                            key_password=options.run.key_password, tsa=options.run.tsa)}
    return dataclasses.replace(result, runs=tuple(done.get(r.run_dir, r) if r.run_id else r for r in result.runs))


def load_signer_for(key: Path | None, password: bytes | None) -> Signer | None:
    """The signer of --key (else $XRUN_SIGNING_KEY), loaded once for every run a command collects; None: unsigned."""
    from runner.attest import load_signer
    from runner.codetree import signing_key_path

    key_path = signing_key_path(key)
    return load_signer(key_path, password) if key_path else None


def collect(run_dir: Path, *, key: Path | None, key_password: bytes | None = None,
            tsa: str | None = None) -> SubmittedRun:
    """Check a finished run's outputs and the node's statement, and sign it here (`xrun collect`)."""
    return collect_runs([run_dir], key=key, key_password=key_password, tsa=tsa)[0]


def wait_run(run_dir: Path, *, key: Path | None, key_password: bytes | None = None,
             tsa: str | None = None) -> SubmittedRun:
    """Block until the scheduler is done with the run's job, then collect it (sign when a key is given)."""
    return wait_runs([run_dir], key=key, key_password=key_password, tsa=tsa)[0]


def cancel_run(run_dir: Path) -> RunRecord:
    """Ask the run's scheduler to stop it (scancel for Slurm); the run's record."""
    return attach(run_dir).cancel()


def collect_runs(run_dirs: Sequence[Path], *, key: Path | None, key_password: bytes | None = None,
                 signer: Signer | None = None, tsa: str | None = None) -> list[SubmittedRun]:
    """Collect every run in one process (the key loaded once); a member whose statement is refused is reported
    (refused, nothing signed) and the others are still collected. One run alone raises the refusal."""
    from runner.context import timestamp_authority

    signer = signer or load_signer_for(key, key_password)
    tsa_url = timestamp_authority(tsa, signer is not None)
    return [_collect_one(attach(d), signer, tsa_url, alone=len(run_dirs) == 1) for d in run_dirs]


def _collect_one(handle: Handle, signer: Signer | None, tsa_url: str | None, *, alone: bool) -> SubmittedRun:
    """handle.collect(); a refusal is reported as the run's result, or raised when the run is collected alone."""
    try:
        return handle.collect(signer, tsa_url)
    except IntegrityError as exc:
        if alone:
            raise
        record = handle.record()
        sched = record.scheduler
        return SubmittedRun(record.run_id, handle.run_dir, sched.seed if sched else None,
                            sched.job_ref if sched else None, run_state(record), error=exc.message, refused=True)


def wait_runs(run_dirs: Sequence[Path], *, key: Path | None, key_password: bytes | None = None,
              poll_s: float = POLL_S, tsa: str | None = None) -> list[SubmittedRun]:
    """Block until the scheduler is done with every run, collecting each as it ends (`xrun wait RUN|SWEEP`)."""
    from runner.context import timestamp_authority

    signer = load_signer_for(key, key_password)  # a wrong password fails now, not after the jobs
    tsa_url = timestamp_authority(tsa, signer is not None)
    done: dict[Path, SubmittedRun] = {}
    pending = [attach(d) for d in run_dirs]
    first_poll = poll_s
    while pending:
        kinds: dict[type[Handle], list[Handle]] = {}
        for handle in pending:
            kinds.setdefault(type(handle), []).append(handle)
        ended = [h for kind, group in kinds.items() for h, r in zip(group, kind.states(group)) if h.finished(r)]
        # Collected while the other members still run: a 200-member sweep is not signed all at the end.
        for handle in ended:
            done[handle.run_dir] = _collect_one(handle, signer, tsa_url, alone=len(run_dirs) == 1)
        pending = [h for h in pending if h.run_dir not in done]
        if pending:
            # Short jobs are seen finished soon; long ones do not poll the controller more than every POLL_MAX_S,
            # but a member whose node wrote its record is asked about at once.
            _sleep_until_changed(pending, poll_s)
            poll_s = first_poll if ended else min(poll_s * 1.5, POLL_MAX_S)
    return [done[d] for d in run_dirs]


def _sleep_until_changed(handles: Sequence[Handle], limit_s: float) -> None:
    """Sleep up to limit_s, waking early when one of the runs' records (run.json) is written."""
    # At most ~1,000 stat calls a second: a 10,000-member sweep on NFS is looked at every 10 s (the poll wins).
    step_s = max(POLL_S, len(handles) / 1000)
    def stamps() -> list[int]:
        out = []
        for handle in handles:
            try:
                out.append((handle.run_dir / "run.json").stat().st_mtime_ns)
            except OSError:
                out.append(0)
        return out

    before, deadline = stamps(), time.monotonic() + limit_s
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step_s, left))
        if stamps() != before:
            return


def cancel_runs(run_dirs: Sequence[Path]) -> list[RunRecord]:
    """Ask the scheduler to stop every run (`xrun cancel RUN|SWEEP`); their records."""
    return [attach(d).cancel() for d in run_dirs]


def prepare(manifest: Path, options: SubmitOptions, distribution: Distribution) -> Prepared:
    """What the backend needs done here: the context, the data in the shared cache, the image built and shipped."""
    from runner.build.distribute import push, save_to_shared
    from runner.build.image import build_image
    from runner.context import RunContext
    from runner.fetch import fetch_data

    if distribution is Distribution.NONE:
        return Prepared(manifest=manifest, options=options)
    cache_dir = shared_cache(options) if distribution is Distribution.SHARED else options.run.cache_dir
    # Hardware is not checked here: the nodes have it.
    run_options = dataclasses.replace(options.run, allow_hardware_mismatch=True, cache_dir=cache_dir, seed=None)
    ctx = RunContext.create(manifest, run_options)
    if distribution is Distribution.SHARED:
        # Verified as `xrun run` verifies: fingerprints, or every byte re-hashed with --verify-data.
        fetch_data(ctx.plan, ctx.cache, ctx.options.fetch)
    built = build_image(ctx.plan, ctx.cache, ctx.client, quiet=ctx.options.quiet)
    if options.registry:
        image = push(built, ctx.client, ctx.cache, ctx.plan.build_digest, options.registry)
    else:
        image = save_to_shared(built, ctx.client, ctx.cache.root / "images")
    return Prepared(manifest=manifest, options=options, ctx=ctx, image=image, cache_dir=ctx.cache.root)


def shared_cache(options: SubmitOptions) -> Path:
    """The cache the nodes read: <shared-dir>/cache, else XRUN_CACHE_DIR (which must be on shared storage)."""
    if options.shared_dir is not None:
        root = options.shared_dir.absolute()
        _check_writable(root, "--shared-dir")
        return root / "cache"
    env = os.environ.get("XRUN_CACHE_DIR")
    if not env:
        raise UsageError("give --shared-dir DIR (a directory every node mounts at the same path), or set "
                         "XRUN_CACHE_DIR to a cache on shared storage")
    _check_writable(Path(env).absolute(), "XRUN_CACHE_DIR")
    return Path(env).absolute()


def _check_writable(path: Path, what: str) -> None:
    """EnvironmentProblem unless a file can be created in path (made when missing); leaves nothing behind."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".xrun-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise EnvironmentProblem(f"{what} {path}: not writable ({exc.strerror}); give a shared directory this user "
                                 "can write") from None


