"""A finished Slurm seed sweep of any size, written without an engine or a cluster: run directories with run.json,
plan.json and an unsigned attestation whose base was bootstrapped from Debian packages. For the report's
structure tests (tests/test_report.py) and its size and load-time benchmark (bench/bench_report.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from runner.attest import ResourceDescriptor
from runner.attest.samples import sample_dependencies, sample_facts, sample_subjects
from runner.attest.sign import write_attestation
from runner.attest.statement import build_statement
from runner.runs.record import RunRecord, SchedulerInfo

SWEEP = "20260101T000000Z-sweep"
NAME = "sweep-report"
BUILDER = "https://xrun.dev/builders/slurm/v1/hpc-test"


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_sweep(runs: Path, members: int, *, debs: int = 100, wheels: int = 30, steps: int = 50) -> list[Path]:
    """`members` succeeded members (seeds 1…members, run ids SWEEP-1…) under runs; their directories."""
    deps = sample_dependencies(wheels) + tuple(
        ResourceDescriptor(name=f"deb/lib{i}", uri=f"pkg:deb/debian/lib{i}@1.{i}?arch=amd64") for i in range(debs))
    facts = dataclasses.replace(sample_facts(wheels=wheels), dependencies=deps, builder_id=BUILDER)
    line = None
    out = []
    for seed in range(1, members + 1):
        run = runs / f"{SWEEP}-{seed}"
        (run / "outputs").mkdir(parents=True)
        attestation = run / "provenance.intoto.jsonl"
        if line is None:  # one statement serves every member: what the report reads of it is the same
            write_attestation(build_statement(sample_subjects(2), facts), None, attestation)
            line = attestation.read_bytes()
        else:
            attestation.write_bytes(line)
        acc, loss = 0.9 + (seed % 7) / 1000, 0.3 - (seed % 5) / 1000
        RunRecord(run_id=run.name, name=NAME, status="succeeded", manifest="/exp/experiment.yaml",
                  manifest_sha256=_hex("manifest"), plan_digest="sha256:" + _hex(f"plan{seed}"),
                  started_on=f"2026-01-01T00:{seed % 60:02d}:00Z", finished_on=f"2026-01-01T01:{seed % 60:02d}:00Z",
                  hardware_class="cpu-2", image_id="sha256:" + _hex("image"), attestation=attestation.name,
                  signed=False, outputs={"model.pkl": _hex(f"model{seed}"), "metrics.json": _hex(f"metrics{seed}")},
                  metrics={"metrics.json": {"acc": acc, "loss": loss}},
                  metric_steps={"metrics.json": {"loss": [[s, 1.0 / (s + 1) + seed / 1000] for s in range(steps)]}},
                  scheduler=SchedulerInfo(backend="slurm", state="completed", job_id="4242", array_index=seed - 1,
                                          cluster="hpc-test", node=f"gpu{seed % 4:02d}", sweep=SWEEP, seed=seed),
                  ).save(run / "run.json")
        (run / "plan.json").write_text(json.dumps({"seeds": {"global": seed}}))
        out.append(run)
    return out
