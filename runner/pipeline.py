"""The `xrun run` pipeline: manifest → plan → fetch → build → run → outputs → attest."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import hardware
from runner.errors import Interrupted, XrunError
from runner.execute import RunResult, container_spec, raise_for_status, run_container
from runner.fetch import Cache, FetchOptions, fetch_data
from runner.manifest import load_manifest
from runner.outputs import collect_outputs
from runner.plan import Plan, resolve_plan
from runner.rundir import RunDir, create_run_dir, default_runs_dir, rfc3339, utc_now, write_json


@dataclass(frozen=True)
class RunOptions:
    """How to run: where runs go, the signing key, and the escape hatches."""

    runs_dir: Path | None = None
    key: Path | None = None
    key_password: bytes | None = None
    allow_hardware_mismatch: bool = False
    quiet: bool = False
    fetch: FetchOptions = field(default_factory=FetchOptions)
    reproduces: Any = None  # a ResourceDescriptor of the attestation this run reproduces


@dataclass(frozen=True)
class RunSummary:
    """What `xrun run` reports."""

    run_id: str
    run_dir: Path
    status: str
    image_id: str
    plan_digest: str
    outputs: dict[str, str]
    metrics: dict[str, dict[str, float]]
    attestation: Path | None
    bundle: Path | None
    signed: bool
    keyid: str | None

    def to_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return {"run_id": self.run_id, "run_dir": str(self.run_dir), "status": self.status,
                "image_id": self.image_id, "plan_digest": self.plan_digest, "outputs": self.outputs,
                "metrics": self.metrics, "attestation": str(self.attestation) if self.attestation else None,
                "bundle": str(self.bundle) if self.bundle else None, "signed": self.signed, "keyid": self.keyid}


def signing_key_path(explicit: Path | None, environ: dict[str, str] = os.environ) -> Path | None:
    """--key, else XRUN_SIGNING_KEY, else none (unsigned)."""
    if explicit is not None:
        return explicit
    value = environ.get("XRUN_SIGNING_KEY")
    return Path(value) if value else None


def run_experiment(manifest_path: Path, options: RunOptions) -> RunSummary:
    """Run one experiment end to end; raises XrunError with the exit code on any failure."""
    from runner.attest import load_signer
    from runner.docker_client import docker_client

    plan = resolve_plan(load_manifest(manifest_path))
    host = hardware.detect_host()
    mismatch = hardware.shortfalls(plan.hardware, host)
    if mismatch and not options.allow_hardware_mismatch:
        hardware.check_host(plan.hardware, host)
    # Load the key before any work: a wrong password should not cost a training run.
    key_path = signing_key_path(options.key)
    signer = load_signer(key_path, options.key_password) if key_path else None
    client = docker_client()
    runs_dir = (options.runs_dir or default_runs_dir(plan.manifest.root)).absolute()
    run = create_run_dir(runs_dir, plan.manifest.text, plan.to_json())
    record: dict[str, Any] = {
        "runId": run.run_id, "name": plan.manifest.name, "status": "running", "manifest": str(plan.manifest.file),
        "manifestSha256": plan.manifest.sha256, "planDigest": plan.digest, "startedOn": rfc3339(utc_now()),
        "host": host.to_json(), "hardwareClass": plan.hardware.name, "hardwareMismatch": mismatch,
    }
    write_json(run.record, record)
    try:
        summary = _execute(plan, run, runs_dir, host, mismatch, signer, client, options, record)
    except KeyboardInterrupt:
        _finish(run, record, "interrupted", "interrupted by the user")
        raise Interrupted("interrupted: the run was stopped; no attestation was written") from None
    except XrunError as exc:
        _finish(run, record, "interrupted" if isinstance(exc, Interrupted) else "failed", exc.message)
        raise
    except Exception as exc:  # a bug of ours: the run must still not look succeeded or attested
        _finish(run, record, "failed", f"internal error: {type(exc).__name__}: {exc}")
        raise
    return summary


def _execute(plan: Plan, run: RunDir, runs_dir: Path, host: hardware.Host, mismatch: list[str], signer: Any,
             client: Any, options: RunOptions, record: dict[str, Any]) -> RunSummary:
    from runner.attest import write_attestation
    from runner.attest.statement import build_statement
    from runner.build.image import build_image
    from runner.provenance import describe, engine_info

    cache = Cache.default()
    fetched = fetch_data(plan, cache, options.fetch)
    image = build_image(plan, cache, client, quiet=options.quiet)
    record["imageId"] = image.id
    spec = container_spec(
        image_id=image.id, command=plan.command, env=plan.env, workdir=plan.manifest.run.workdir,
        hardware=plan.hardware, host=host, data_mounts=[(f.host_path, f.container_path) for f in fetched],
        outputs_dir=run.outputs, timeout_s=plan.timeout_s,
        labels={"org.xrun.run-id": run.run_id, "org.xrun.name": plan.manifest.name},
    )
    result = run_container(client, spec, run.log, stream=not options.quiet, prefix=plan.manifest.name)
    _record_result(record, result)
    raise_for_status(result, plan.timeout_s)
    outputs = collect_outputs(plan.outputs, run.outputs)
    record.update({"status": "succeeded", "outputs": outputs.digests(), "metrics": outputs.metrics,
                   "attestation": run.attestation.name, "signed": signer is not None})
    write_json(run.record, record)
    subjects, facts = describe(
        plan=plan, fetched=fetched, image=image, spec=spec, result=result, outputs=outputs, host=host,
        engine=engine_info(client), run_id=run.run_id, runs_dir=runs_dir, log_sha256=result.log_sha256,
        record_sha256=hashlib.sha256(run.record.read_bytes()).hexdigest(),
        settings={"allowHardwareMismatch": options.allow_hardware_mismatch, "signed": signer is not None,
                  "fetch": {"retries": options.fetch.retries, "parallel": options.fetch.parallel}},
        hardware_mismatch=mismatch, reproduced=options.reproduces,
    )
    statement = build_statement(subjects, facts)
    written = write_attestation(statement, signer, run.attestation, run.bundle)
    if signer is None:
        print("xrun: warning: no signing key (--key or XRUN_SIGNING_KEY): the attestation is UNSIGNED "
              "(SLSA Build L1); create a key with `xrun keygen`", file=sys.stderr)
    return RunSummary(
        run_id=run.run_id, run_dir=run.path, status="succeeded", image_id=image.id, plan_digest=plan.digest,
        outputs=outputs.digests(), metrics=outputs.metrics, attestation=run.attestation,
        bundle=run.bundle if run.bundle.exists() else None, signed=signer is not None,
        keyid=getattr(written, "keyid", None),
    )


def _record_result(record: dict[str, Any], result: RunResult) -> None:
    record.update({"exitCode": result.exit_code, "containerStartedOn": rfc3339(result.started_on),
                   "finishedOn": rfc3339(result.finished_on), "logSha256": result.log_sha256,
                   "containerStatus": result.status})


def _finish(run: RunDir, record: dict[str, Any], status: str, reason: str) -> None:
    record.update({"status": status, "error": reason, "finishedOn": record.get("finishedOn") or rfc3339(utc_now())})
    record.pop("attestation", None)
    write_json(run.record, record)
    # A partly written attestation must never outlive a failed run.
    for path in (run.attestation, run.bundle):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
