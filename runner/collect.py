"""`xrun collect`: a compute node's statement checked against what the submitter knows, then signed here.

The node is outside the trust boundary: its statement is read with the one strict reader
(attest/recorded.py: no duplicate keys, no NaN; then the statement schema, and no internal parameter
xrun does not write), its subjects are compared with the outputs re-hashed here, and every resolved dependency
with the frozen plan (plan.json, whose digest the submitter recorded) and the image the submitter
built (its build record in the shared cache): image ID, base image, wheels, Debian packages, data
digests, code tree, lockfile. One disagreement and nothing is signed (exit 3, naming the first).
What only the node can know (host facts, timings, the engine it ran) is signed as the node's report,
and the statement says so in internalParameters.collect.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.attest.recorded import RecordedRun, read_statement
from runner.attest.statement import statement_problems
from runner.errors import IntegrityError
from runner.plan import PlanRecord, build_digest_of, canonical_json
from runner.rundir import PLAN_FILE, RunDir
from runner.runs.record import RunRecord

# The internal parameters a node's xrun writes (runner/provenance.py, runner/backends/slurm.py).
NODE_INTERNAL_KEYS = frozenset({"hermetic", "isolation", "seeding", "hardwareMismatch", "planDigest", "buildDigest",
                                "settings", "scheduler"})
# What the submitter cannot check: signed as the node reported it.
NODE_REPORT = ("runDetails.metadata", "runDetails.byproducts", "runDetails.builder.builderDependencies",
               "internalParameters.isolation", "internalParameters.hardwareMismatch", "internalParameters.scheduler")
CHECKED = ("subject", "resolvedDependencies", "internalParameters.planDigest", "internalParameters.buildDigest",
           "internalParameters.seeding.global", "internalParameters.scheduler.jobId")


@dataclass(frozen=True)
class Submitted:
    """What the submitter handed out for one run, as it wrote it: the frozen plan and the image."""

    plan: PlanRecord  # plan.json
    plan_digest: str  # run.json's planDigest, checked against plan.json
    image_id: str  # job.json's image ID
    built: Any  # the build record of that image in the shared cache (BuiltImage), None when absent
    job_id: str | None  # the scheduler's job id (the array's for a member)


def read_node_statement(path: Path) -> dict[str, Any]:
    """The node's statement through the strict reader; IntegrityError naming the file and the first problem."""
    try:
        statement = read_statement(path)
    except IntegrityError as exc:
        raise IntegrityError(f"{exc.message} (the node's statement: not signed)") from None
    problems = statement_problems(statement)
    internal = (statement["predicate"]["buildDefinition"].get("internalParameters") or {}) if not problems else {}
    unknown = sorted(set(internal) - NODE_INTERNAL_KEYS)
    if unknown:
        problems.append(f"predicate.buildDefinition.internalParameters: unknown field {unknown[0]!r}")
    if problems:
        raise IntegrityError(f"{path}: the node's statement is malformed: {problems[0]}; not signed")
    return statement


def load_submitted(run: RunDir, record: RunRecord, cache_dir: Path, image_id: str) -> Submitted:
    """The frozen plan (its digest checked against run.json) and the build record of the submitted image."""
    from runner.build.image import load_build_record
    from runner.fetch import Cache

    plan_file = run.path / PLAN_FILE
    plan = PlanRecord.load(plan_file)
    if plan is None:
        raise IntegrityError(f"{plan_file}: the submitted plan is unreadable; not signed")
    digest = hashlib.sha256(canonical_json(plan.raw)).hexdigest()
    if digest != record.plan_digest:
        raise IntegrityError(f"{plan_file}: the plan's digest is {digest[:12]}, but the run was submitted with plan "
                             f"{record.plan_digest[:12]} (changed on shared storage); not signed")
    built = load_build_record(Cache(cache_dir), build_digest_of(plan.raw))
    sched = record.scheduler
    return Submitted(plan=plan, plan_digest=record.plan_digest, image_id=image_id,
                     built=built if built is not None and built.id == image_id else None,
                     job_id=sched.job_id if sched else None)


def disagreements(statement: dict[str, Any], submitted: Submitted) -> list[str]:
    """Each place where the node's statement differs from what was submitted, as one line; empty when it agrees."""
    found: list[str] = []
    recorded = RecordedRun.from_statement(statement)
    internal = statement["predicate"]["buildDefinition"].get("internalParameters") or {}
    plan = submitted.plan.raw

    def differ(what: str, node: Any, expected: Any) -> None:
        if node != expected:
            found.append(f"{what}: the node recorded {_short(node)}, the submitter has {_short(expected)}")

    differ("internalParameters.planDigest", internal.get("planDigest"), submitted.plan_digest)
    differ("internalParameters.buildDigest", internal.get("buildDigest"), build_digest_of(plan))
    differ("internalParameters.seeding.global", (internal.get("seeding") or {}).get("global"), plan["seeds"]["global"])
    job = (internal.get("scheduler") or {}).get("jobId")
    if submitted.job_id and job is not None:
        differ("internalParameters.scheduler.jobId", job, submitted.job_id)
    differ("image", recorded.image.id if recorded.image else None, submitted.image_id)
    deps = recorded.dependencies
    base = plan["image"]["base"]
    if base is not None:
        differ("base-image", _digest(deps.get("base-image"), "sha256"), base["digest"].removeprefix("sha256:"))
    built = submitted.built
    if built is None:
        found.append(f"image: no build record of {submitted.image_id} in the shared cache: the submitter cannot "
                     "check the wheels and the base it was built from")
    else:
        differ("base-image imageId", recorded.base.image_id if recorded.base else None, built.base_image_id)
        # By sha256: a purl normalizes the name (probe_pkg → probe-pkg), the digest names the file.
        differ("wheels", sorted(w.sha256 for w in recorded.wheels), sorted(w.sha256 for w in built.wheels))
        differ("debs", sorted(recorded.base.debs if recorded.base else ()), sorted(d.purl for d in built.debs))
    data = {name[len("data/"):]: dep for name, dep in deps.items()
            if str(name).startswith("data/") and not str(name).endswith("/listing")}
    differ("data", sorted(data), sorted(d["name"] for d in plan["data"]))
    for item in plan["data"]:
        dep = data.get(item["name"]) or {}
        for algorithm, value in (dep.get("digest") or {}).items():
            if algorithm in item["digests"]:
                differ(f"data/{item['name']} {algorithm}", value, item["digests"][algorithm])
        if "source" in item:
            differ(f"data/{item['name']} source", (dep.get("annotations") or {}).get("source"), item["source"])
    differ("code", recorded.code_digest, plan["code"]["digest"])
    lock = plan["lockfile"]
    differ("lockfile", _digest(deps.get("lockfile"), "sha256"), lock["sha256"] if lock else None)
    return found


def mark_node_report(statement: dict[str, Any], scheduler_disagreements: Sequence[str] = ()) -> dict[str, Any]:
    """The statement with internalParameters.collect: what the submitter checked, what is the node's word, and
    where the scheduler's word differs from it."""
    definition = statement["predicate"]["buildDefinition"]
    internal = dict(definition.get("internalParameters") or {})
    internal["collect"] = {"checkedBySubmitter": list(CHECKED), "nodeReport": list(NODE_REPORT),
                           **({"schedulerDisagrees": list(scheduler_disagreements)} if scheduler_disagreements else {})}
    predicate = {**statement["predicate"], "buildDefinition": {**definition, "internalParameters": internal}}
    return {**statement, "predicate": predicate}


def _digest(dep: Any, algorithm: str) -> Any:
    return ((dep or {}).get("digest") or {}).get(algorithm)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
