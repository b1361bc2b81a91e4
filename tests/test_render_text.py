"""The terminal renderers (runner/report/text.py) and the failure message of a killed container: unit tests of the
lines users read (issue 21's small defects); the real runs behind them are in test_run.py and test_slurm.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from runner.engine.execute import failure_message
from runner.report.text import run_status, submitted, sweep_summary
from runner.report.views import seed_list
from runner.rundir import NODE_STATEMENT
from runner.runs.record import RunRecord, SchedulerInfo


def _record(status: str, state: str, attestation: str | None = None) -> RunRecord:
    return RunRecord(run_id="r1", name="exp", status=status, manifest="/m.yaml", manifest_sha256="0" * 64,
                     plan_digest="sha256:" + "0" * 64, started_on="2026-01-01T00:00:00Z", attestation=attestation,
                     scheduler=SchedulerInfo(backend="slurm", state=state, job_id="7", array_index=0))


def test_runs_ls_never_says_succeeded_running():
    # Without accounting the scheduler's last word can be "running" after the node finished.
    assert run_status(_record("succeeded", "running")) == "succeeded (not collected)"
    assert run_status(_record("succeeded", "running", attestation="provenance.intoto.jsonl")) == "succeeded"
    assert run_status(_record("succeeded", "completed")) == "succeeded (completed)"
    assert run_status(_record("submitted", "pending")) == "submitted (pending)"
    assert run_status(_record("failed", "cancelled")) == "failed (cancelled)"


def test_runs_ls_says_not_collected_while_only_the_nodes_statement_is_recorded():
    # The node writes its unsigned statement and names it in run.json; only `xrun collect` signs it.
    assert run_status(_record("succeeded", "running", attestation=NODE_STATEMENT)) == "succeeded (not collected)"


def test_seed_list_folds_runs_of_seeds():
    assert seed_list([1, 2, 3, 4, 5, 6]) == "1-6"
    assert seed_list([11, 2, 1, 10, 3]) == "1-3, 10, 11"
    assert seed_list(range(1, 201)) == "1-200"
    assert seed_list([]) == "none"


def _failed(run_id: str, seed: int) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, seed=seed, state="failed", error="boom")


def test_sweep_summary_header_names_the_failed_seeds():
    # The summary's fields as the renderer reads them (the type moves with the backends' restructuring).
    summary = SimpleNamespace(sweep="s1", members=6, succeeded=4, unfinished=0, seeds=(1, 2, 3, 4, 5, 6), metrics=(),
                              failed=(_failed("s1-4", 5), _failed("s1-5", 6)))
    head = sweep_summary(summary).splitlines()[0]
    assert head == "sweep s1: 4 of 6 members succeeded, 2 failed (seeds 5, 6); seeds 1-6", head


def test_kubernetes_render_counts_its_members():
    # Rendered Jobs are no runs xrun follows (runs is empty): the count once read "(0 seeds)".
    result = SimpleNamespace(backend="kubernetes", sweep="abc", job_id=None, image_id="sha256:1",
                             image_reference="r@d", script=None, runs=(), rendered=(Path("out/04-job-x.yaml"),),
                             seeds=(1, 2, 3, 4))
    head = submitted(result).splitlines()[0]
    assert head == "submitted to kubernetes, sweep abc (4 members: seeds 1-4)", head
    single = submitted(SimpleNamespace(**{**vars(result), "sweep": None, "seeds": ()})).splitlines()[0]
    assert single == "submitted to kubernetes", single


def test_a_killed_container_says_it_was_killed():
    message = failure_message(137, has_log=False)
    assert message.startswith("the training container was killed (SIGKILL, exit code 137)"), message
    assert "scancel" in message and message.endswith("it wrote nothing to its log")
    assert "killed by SIGTERM (exit code 143)" in failure_message(143, has_log=True)
    assert failure_message(3, has_log=True) == "the training command exited with code 3; last log lines:"
