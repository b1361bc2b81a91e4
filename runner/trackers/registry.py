"""A gate where models are kept: register verified model files in the MLflow Model Registry, and only those.

`xrun verify … --mlflow URL --register NAME` calls `register_verified` after a verification that
passed: the model files (the `--artifact` files whose digests the attestation names) go to an MLflow
run with the attestation and the VSA beside them, and a new version of NAME points at them, tagged
with the result. A failed verification never reaches this module. Exactly once: a version is looked
up by its attestation's digest before one is created.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import EnvironmentProblem, IntegrityError
from runner.trackers.mlflow import CLIENT_DEFAULTS, explain

EXPERIMENT = "xrun-registry"
ATTESTATION_TAG = "xrun.attestation"


@dataclass(frozen=True)
class Evidence:
    """What a registered version carries: the verified files and the verification's outcome."""

    model_files: tuple[Path, ...]  # verified against the attestation's subjects
    attestation: Path
    vsa: Path
    result: str  # PASSED
    policy_sha256: str | None
    levels: tuple[str, ...]
    signed_at: str | None  # the RFC 3161 time, when verified

    def tags(self) -> dict[str, str]:
        """The version's tags (what a deployment gate can filter on)."""
        values = {
            "xrun.verification": self.result, ATTESTATION_TAG: f"sha256:{_sha256(self.attestation)}",
            "xrun.vsa": f"sha256:{_sha256(self.vsa)}", "xrun.verifiedLevels": ",".join(self.levels),
            "xrun.policy": f"sha256:{self.policy_sha256}" if self.policy_sha256 else None,
            "xrun.signedAt": self.signed_at,
        }
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class Registered:
    """The model version that holds the verified files."""

    name: str
    version: str
    run_id: str
    source: str
    existing: bool  # registered before (same attestation): nothing new was created

    def to_json(self) -> dict[str, Any]:
        """For `xrun verify --json`."""
        return {"name": self.name, "version": self.version, "runId": self.run_id, "source": self.source,
                "existing": self.existing}


def register_verified(uri: str, name: str, evidence: Evidence) -> Registered:
    """Register the verified model files as a new version of `name` (or find the one already made)."""
    if evidence.result != "PASSED":
        raise IntegrityError(f"the verification did not pass; {name!r} was not registered")
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise EnvironmentProblem("registering a model needs the MLflow client: pip install 'xrun[mlflow]'") from None
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return _register(client, name, evidence)
    except (EnvironmentProblem, IntegrityError):
        raise
    except Exception as exc:  # the client raises many kinds (MlflowException, requests, OSError)
        raise EnvironmentProblem(explain(uri, exc) + f"; {name!r} was not registered") from None


def _register(client: Any, name: str, evidence: Evidence) -> Registered:
    tags = evidence.tags()
    found = _existing(client, name, tags[ATTESTATION_TAG])
    if found is not None:
        return Registered(name, str(found.version), str(found.run_id), str(found.source), existing=True)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, tags=tags, run_name=f"register-{name}")
    run_id = run.info.run_id
    for file in evidence.model_files:
        client.log_artifact(run_id, str(file), artifact_path="model")
    for file in (evidence.attestation, evidence.vsa):
        client.log_artifact(run_id, str(file), artifact_path="xrun")
    client.set_terminated(run_id, status="FINISHED")
    if _registered_model(client, name) is None:
        client.create_registered_model(name, tags={"xrun.gated": "true"},
                                       description="registered by `xrun verify --register` after verification")
    source = f"{run.info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    return Registered(name, str(version.version), run_id, source, existing=False)


def _registered_model(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _existing(client: Any, name: str, attestation_tag: str) -> Any:
    if _registered_model(client, name) is None:
        return None
    quoted = name.replace("'", "\\'")
    for version in client.search_model_versions(f"name = '{quoted}'"):
        if (version.tags or {}).get(ATTESTATION_TAG) == attestation_tag:
            return version
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
