"""The `xrun run` pipeline: manifest → plan → fetch → build → run → outputs → attest.

`run_experiment` builds the RunContext once, opens the run directory and its typed record, and
hands the context to each stage in turn; every stage returns a typed result, and the provenance is
described from those results alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path

from runner.context import RunContext, RunOptions, signing_key_path
from runner.build.image import BuiltImage
from runner.engine.execute import Execution, container_spec, raise_for_status, run_container
from runner.engine.labels import NAME_LABEL, RUN_ID_LABEL, RUNNER_LABEL, runner_identity
from runner.engine.watchdog import Watchdog, reap_orphans
from runner.errors import IntegrityError, Interrupted, XrunError
from runner.fetch import FetchedData, changed_since_fetch, fetch_data
from runner.outputs import collect_outputs
from runner.redact import redact
from runner.rundir import RunDir, create_run_dir, discard_run_dir, rfc3339, utc_now
from runner.runs.record import ContainerStatus, RunRecord, RunStatus
from runner.stages import CompletedRun, RunSummary, StageHooks

__all__ = ["RunOptions", "new_record", "run_experiment", "run_in", "signing_key_path"]


def run_experiment(manifest_path: Path, options: RunOptions) -> RunSummary:
    """Run one experiment end to end; raises XrunError with the exit code on any failure."""
    ctx = RunContext.create(manifest_path, options)
    reap_orphans(ctx.runs_dir, ctx.client)
    plan = ctx.plan
    run = create_run_dir(ctx.runs_dir, plan.manifest.text, plan.to_json())
    try:
        record = new_record(ctx, run)
        record.save(run.record)
    except BaseException:  # a signal before the record exists: leave no folder that no command can read
        discard_run_dir(run)
        raise
    return run_in(ctx, run, record)


def new_record(ctx: RunContext, run: RunDir) -> RunRecord:
    """The run.json of a run starting now in `run`."""
    plan = ctx.plan
    return RunRecord(
        run_id=run.run_id, name=plan.manifest.name, status=RunStatus.RUNNING, manifest=str(plan.manifest.file),
        manifest_sha256=plan.manifest.sha256, plan_digest=plan.digest, started_on=rfc3339(utc_now()),
        host=ctx.host.to_json(), hardware_class=plan.hardware.name, hardware_mismatch=list(ctx.hardware_mismatch),
        runner=runner_identity(), scheduler=ctx.options.scheduler,
    )


def run_in(ctx: RunContext, run: RunDir, record: RunRecord, hooks: StageHooks = StageHooks()) -> RunSummary:
    """Run the stages in a run directory whose record is saved; failures are recorded, then raised."""
    # From here on, a runner killed in any phase leaves the clean-up to the watchdog.
    watchdog = Watchdog.start(run.path)
    try:
        summary = _execute(ctx, run, record, hooks, watchdog)
    except KeyboardInterrupt:
        _finish(run, record, RunStatus.INTERRUPTED, "interrupted by the user")
        raise Interrupted("interrupted: the run was stopped; no attestation was written") from None
    except XrunError as exc:
        _finish(run, record, RunStatus.INTERRUPTED if isinstance(exc, Interrupted) else RunStatus.FAILED, exc.message)
        raise
    except Exception as exc:  # a bug of ours: the run must still not look succeeded or attested
        _finish(run, record, RunStatus.FAILED, redact(f"internal error: {type(exc).__name__}: {exc}"))
        raise
    finally:
        watchdog.close()
    if hooks.attestation is not None:
        return summary  # a node's unsigned statement: trackers see the run once the submitter has signed it
    from runner.trackers.track import after_run  # after the attestation; a tracker never fails the run

    return dataclasses.replace(summary, tracking=after_run(ctx, run.path))


def _execute(ctx: RunContext, run: RunDir, record: RunRecord, hooks: StageHooks, watchdog: Watchdog) -> RunSummary:
    from runner.attest import write_attestation
    from runner.attest.statement import build_statement, prepare_check
    from runner.build.image import build_image
    from runner.provenance import ask_engine_info, describe

    plan = ctx.plan
    fetched = tuple(fetch_data(plan, ctx.cache, ctx.options.fetch))
    image = (hooks.image(ctx) if hooks.image
             else build_image(plan, ctx.cache, ctx.client, fetch=ctx.options.fetch, progress=ctx.progress))
    record.image_id = image.id
    labels = {RUN_ID_LABEL: run.run_id, NAME_LABEL: plan.manifest.name, RUNNER_LABEL: str(record.runner)}
    # While the training runs, the main thread only waits on the engine: meanwhile ask the engine's
    # facts for the attestation and load the statement's schema check (~50 ms of the warm run otherwise).
    engine = ask_engine_info(ctx.client)
    threading.Thread(target=prepare_check, name="xrun-prepare-check", daemon=True).start()
    execution = _run_container(ctx, run, image, fetched, labels)
    _record_result(record, execution)
    if execution.result.left_behind:
        # The engine did not confirm the removal in time: the watchdog goes on with it after we exit.
        watchdog.hand_over(execution.result.left_behind)
        if execution.result.status == ContainerStatus.SUCCEEDED:
            ctx.progress.warn(f"the engine has not confirmed the removal of {', '.join(execution.result.left_behind)}; "
                              "the watchdog goes on removing it")
    raise_for_status(execution.result, plan.timeout_s)
    _check_inputs_unchanged(ctx, fetched)
    outputs = collect_outputs(plan.outputs, run.outputs, ctx.progress)
    attestation = run.path / (hooks.attestation or run.attestation.name)
    record.status, record.outputs, record.metrics = RunStatus.SUCCEEDED, outputs.digests(), outputs.metrics
    record.metric_steps = outputs.steps
    record.attestation, record.signed = attestation.name, ctx.signer is not None
    record.save(run.record)
    done = CompletedRun(run=run, fetched=fetched, image=image, execution=execution, outputs=outputs)
    subjects, facts = describe(ctx, done, record_sha256=hashlib.sha256(run.record.read_bytes()).hexdigest(),
                               engine=engine())
    if hooks.facts is not None:
        facts = hooks.facts(facts)
    written = write_attestation(build_statement(subjects, facts), ctx.signer, attestation,
                                run.bundle if hooks.attestation is None else None, tsa_url=ctx.tsa_url)
    if ctx.signer is None and hooks.attestation is None:
        ctx.progress.warn("no signing key (--key or XRUN_SIGNING_KEY): the attestation is UNSIGNED "
                          "(SLSA Build L1); create a key with `xrun keygen`")
    return RunSummary(
        run_id=run.run_id, run_dir=run.path, status=RunStatus.SUCCEEDED, image_id=image.id, plan_digest=plan.digest,
        outputs=outputs.digests(), metrics=outputs.metrics, attestation=attestation,
        bundle=run.bundle if run.bundle.exists() else None, signed=ctx.signer is not None,
        keyid=getattr(written, "keyid", None),
    )


def _run_container(ctx: RunContext, run: RunDir, image: BuiltImage, fetched: tuple[FetchedData, ...],
                   labels: dict[str, str]) -> Execution:
    """The run stage on this host's engine (a cluster node runs it too: runner/node.py)."""
    plan = ctx.plan
    spec = container_spec(
        image_id=image.id, command=plan.command, env=plan.env, workdir=plan.manifest.run.workdir,
        hardware=plan.hardware, host=ctx.host, data_mounts=[(f.host_path, f.container_path) for f in fetched],
        outputs_dir=run.outputs, timeout_s=plan.timeout_s, labels=labels, gpu_allocation=ctx.gpu_allocation,
    )
    result = run_container(ctx.client, spec, run.log, stream=not ctx.options.quiet, prefix=plan.manifest.name)
    return Execution(spec=spec, result=result)


def _check_inputs_unchanged(ctx: RunContext, fetched: tuple[FetchedData, ...]) -> None:
    """The data the training read must still be the verified bytes: a cache write during the run is exit 3."""
    changed = changed_since_fetch(ctx.cache, fetched)
    if changed:
        raise IntegrityError(f"data item(s) {', '.join(changed)} changed in the cache while the training ran; the "
                             "run is not attested. Rerun it (the entries are re-hashed and fetched again if needed)")


def _record_result(record: RunRecord, execution: Execution) -> None:
    result = execution.result
    record.exit_code = result.exit_code
    record.container_started_on = rfc3339(result.started_on)
    record.finished_on = rfc3339(result.finished_on)
    record.log_sha256 = result.log_sha256
    record.container_status = result.status


def _finish(run: RunDir, record: RunRecord, status: RunStatus, reason: str) -> None:
    record.status, record.error = status, reason
    record.finished_on = record.finished_on or rfc3339(utc_now())
    record.attestation = None
    record.save(run.record)
    # A partly written attestation must never outlive a failed run.
    for path in (run.attestation, run.bundle, run.node_statement):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
