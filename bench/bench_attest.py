"""Benchmark of the attestation stage: build, sign + write, and verify a 1,000-subject statement.

Run by hand: `python bench/bench_attest.py [--quick]`. Prints a Markdown table; `run()` returns the rows.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.attest import (  # noqa: E402
    build_statement,
    generate_keypair,
    load_policy,
    load_signer,
    verify_attestation,
    write_attestation,
)
from runner.attest.samples import BASE_DIGEST, DATA_DIGEST, MANIFEST_SHA256, sample_facts, sample_subjects  # noqa: E402
from runner.attest.sign import serialize_statement  # noqa: E402

WHEELS = 150  # a realistic ML lockfile (torch, numpy, pandas, … and their dependencies)


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def _row(operation: str, subjects: int, key: str, samples: list[float], payload: int) -> dict[str, Any]:
    return {"operation": operation, "subjects": subjects, "key": key, "runs": len(samples),
            "median_ms": round(statistics.median(samples), 2), "min_ms": round(min(samples), 2),
            "payload_kib": round(payload / 1024, 1)}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Time each step; quick uses fewer repeats (the statement keeps 1,000 subjects)."""
    subjects_count = 1000
    repeats = 5 if quick else 15
    rows: list[dict[str, Any]] = []
    facts = sample_facts(wheels=WHEELS)
    subjects = sample_subjects(subjects_count)
    statement = build_statement(subjects, facts)
    payload_size = len(serialize_statement(statement))
    rows.append(_row("build statement (+ schema check)", subjects_count, "-",
                     _time(lambda: build_statement(subjects, facts), repeats), payload_size))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policy_path = root / "policy.json"
        policy_path.write_text(
            '{"apiVersion": "xrun/v1", "kind": "Policy", "allowedBuilders": ["https://xrun.dev/builders/host/v1/*"],'
            f' "allowedBaseImages": ["sha256:{BASE_DIGEST}"], "requiredData": {{"iris": "sha256:{DATA_DIGEST}"}},'
            f' "manifestDigest": "sha256:{MANIFEST_SHA256}", "allowedHardwareClasses": ["cpu-2"], "maxAge": "7d"}}')
        policy = load_policy(policy_path)
        for kind in ("ecdsa-p256", "ed25519"):
            key, pub = generate_keypair(kind, root / kind)
            signer = load_signer(key)
            jsonl, bundle = root / f"{kind}.intoto.jsonl", root / f"{kind}.sigstore.json"
            rows.append(_row("sign + write (jsonl + bundle)", subjects_count, kind,
                             _time(functools.partial(write_attestation, statement, signer, jsonl, bundle), repeats),
                             payload_size))
            now = datetime.now(timezone.utc)
            for label, path in (("verify .intoto.jsonl", jsonl), ("verify .sigstore.json", bundle)):
                verdict = verify_attestation(path, [pub], [], policy, now)
                assert verdict.ok, verdict.lines()
                rows.append(_row(label + " (+ policy)", subjects_count, kind,
                                 _time(functools.partial(verify_attestation, path, [pub], [], policy, now), repeats),
                                 payload_size))
        rows += timestamp_rows(root, statement, signer, payload_size, repeats)
    return rows


def timestamp_rows(root: Path, statement: dict[str, Any], signer: Any, payload: int,
                   repeats: int) -> list[dict[str, Any]]:
    """What `--tsa` adds to a run: sign + write with and without an RFC 3161 timestamp from a TSA on 127.0.0.1.

    The TSA is the tests' one (`openssl ts -reply` behind an HTTP handler), so the figure is xrun's
    request, the round trip and openssl's signing, without a network; a public TSA adds its latency.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tsaserver import TsaServer

    tsa = TsaServer(root / "tsa").start()
    try:
        jsonl, bundle = root / "tsa.intoto.jsonl", root / "tsa.sigstore.json"
        plain = _time(functools.partial(write_attestation, statement, signer, jsonl, bundle), repeats)
        stamped = _time(functools.partial(write_attestation, statement, signer, jsonl, bundle, tsa_url=tsa.url),
                        repeats)
    finally:
        tsa.stop()
    count = len(statement["subject"])
    added = [s - p for s, p in zip(sorted(stamped), sorted(plain))]
    return [_row("sign + write, no timestamp", count, signer.kind, plain, payload),
            _row("sign + write + RFC 3161 timestamp (local TSA)", count, signer.kind, stamped, payload),
            _row("added by --tsa (per run)", count, signer.kind, added, payload)]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    columns = ["operation", "subjects", "key", "median_ms", "min_ms", "runs", "payload_kib"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    print(markdown(run(quick=args.quick)))


if __name__ == "__main__":
    main()
