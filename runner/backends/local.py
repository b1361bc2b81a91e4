"""The local backend: the whole pipeline on this host's Docker engine (DOCKER_HOST honoured), one run per seed."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from runner.backends.interface import Backend, Distribution, Handle, Prepared, SubmitResult, SubmittedRun, run_state
from runner.errors import UsageError, XrunError
from runner.rundir import RunDir, new_run_id
from runner.runs.record import RunRecord, RunStatus, SchedulerInfo, SchedulerState

if TYPE_CHECKING:
    from runner.attest.keys import Signer


class LocalBackend(Backend):
    """Runs `xrun run`'s pipeline per seed: in sequence, or --parallel N at once."""

    name = "local"
    distribution = Distribution.NONE

    def submit(self, prepared: Prepared) -> SubmitResult:
        """Run every seed now; a failed member is reported, not raised (unless it is the only run)."""
        from runner.pipeline import run_experiment

        options = prepared.options
        seeds: list[int | None] = list(options.seeds) or [None]
        sweep = new_run_id() if options.seeds else None

        def one(index: int, seed: int | None) -> SubmittedRun:
            scheduler = SchedulerInfo(backend="local", state=SchedulerState.RUNNING, sweep=sweep, array_index=index,
                                      seed=seed)
            run_options = dataclasses.replace(options.run, seed=seed, scheduler=scheduler if sweep else None)
            try:
                summary = run_experiment(prepared.manifest, run_options)
            except XrunError as exc:
                if len(seeds) == 1:
                    raise
                return SubmittedRun(run_id="", run_dir=Path(), seed=seed, job=None, state=RunStatus.FAILED,
                                    error=exc.message)
            return SubmittedRun(run_id=summary.run_id, run_dir=summary.run_dir, seed=seed, job=None,
                                state=RunStatus.SUCCEEDED, attestation=summary.attestation)

        if options.parallel > 1 and len(seeds) > 1:
            with ThreadPoolExecutor(max_workers=options.parallel) as pool:
                done = list(pool.map(lambda pair: one(*pair), enumerate(seeds)))
        else:
            done = [one(i, s) for i, s in enumerate(seeds)]
        image_id = ""
        for r in done:
            record = RunRecord.load(r.run_dir / "run.json") if r.run_id else None
            image_id = image_id or (record.image_id if record and record.image_id else "")
        return SubmitResult(backend=self.name, sweep=sweep, job_id=None, image_id=image_id, image_reference=None,
                            script=None, runs=tuple(done), seeds=options.seeds)

    def attach(self, run_dir: Path) -> Handle:
        """A local run: finished when its xrun process is."""
        return LocalHandle(run_dir)


class LocalHandle(Handle):
    """A run made on this host: signed when it finished, stopped with Ctrl-C."""

    def cancel(self) -> RunRecord:
        """Nothing to ask: the run belongs to the xrun process that runs it."""
        raise UsageError(f"{self.run_dir}: not a cluster run; a local run stops with Ctrl-C")

    def collect(self, signer: Signer | None, tsa_url: str | None = None) -> SubmittedRun:
        """The attestation the run wrote (or how it ended)."""
        record = self.record()
        sched = record.scheduler
        attestation = RunDir(self.run_dir.name, self.run_dir).attestation
        return SubmittedRun(record.run_id, self.run_dir, sched.seed if sched else None, None, run_state(record),
                            attestation=attestation if attestation.exists() else None,
                            error=None if attestation.exists() else record.error)
