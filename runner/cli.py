"""The `xrun` command line: argument parsing and printing only; the logic lives in the library."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from runner import __version__
from runner.errors import EXIT_INTERRUPTED, XrunError
from runner.interrupts import interrupts_raise
from runner.report import text

EXIT_INTERNAL = 70
EPILOG = """exit codes: 0 success · 1 training command or build failed · 2 bad usage or invalid manifest/policy ·
3 integrity failure (checksum, signature, policy) · 4 environment problem (no Docker engine, hardware,
unreachable data) · 5 reproduction mismatch · 130 interrupted"""

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `xrun` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(_shorthand(argv, parser))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    # SIGTERM and SIGHUP end a command like Ctrl-C, in every phase; the handlers below run with
    # further signals held, so a second Ctrl-C cannot break the clean-up half-way.
    with interrupts_raise():
        try:
            return args.handler(args)
        except XrunError as exc:
            _error(exc.message, exc.lines)
            return exc.exit_code
        except KeyboardInterrupt:
            _error("interrupted: stopped; nothing was left half-written")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            return 0
        except Exception as exc:  # a bug of ours: say so plainly; the traceback only on request
            if os.environ.get("XRUN_DEBUG"):
                traceback.print_exc()
            _error(f"internal error: {type(exc).__name__}: {exc} (a bug in xrun; rerun with XRUN_DEBUG=1 "
                   "for the traceback and report it)")
            return EXIT_INTERNAL


def _shorthand(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`xrun FILE.yaml …` means `xrun run FILE.yaml …`."""
    commands = set(_subcommands(parser))
    for i, arg in enumerate(argv):
        if arg.startswith("-"):
            continue
        if arg not in commands and (arg.endswith((".yaml", ".yml")) or Path(arg).is_file()):
            return argv[:i] + ["run"] + argv[i:]
        break
    return argv


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:  # argparse has no public accessor for this
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _help(parser: argparse.ArgumentParser) -> int:
    """A command group called without its subcommand: its help, exit 2."""
    parser.print_help()
    return 2


def _error(message: str, lines: list[str] | None = None) -> None:
    print(f"xrun: error: {message}", file=sys.stderr)
    for line in lines or ():
        print(f"  {line}", file=sys.stderr)


def _print_json(value: Any) -> None:
    from runner.report.json import render

    print(render(value))


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="xrun",
        description="Run an ML experiment hermetically from one manifest and attest what produced it.",
        epilog="example: xrun examples/quickstart/experiment.yaml\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"xrun {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, help_text: str, example: str, handler: Handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {example}\n\n{EPILOG}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = command("run", "fetch, build, run and attest an experiment (also: xrun FILE.yaml)",
                "xrun run experiment.yaml --key xrun.key", _cmd_run)
    _manifest_arg(p)
    _run_options(p)

    p = command("validate", "check a manifest against the schema and the rules a schema cannot express",
                "xrun validate experiment.yaml", _cmd_validate)
    _manifest_arg(p, many=True)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("plan", "resolve a manifest into a pinned plan without running anything",
                "xrun plan experiment.yaml --json", _cmd_plan)
    _manifest_arg(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = command("schema", "print a JSON Schema shipped with xrun (default: the manifest's)",
                "xrun schema > experiment.schema.json", _cmd_schema)
    p.add_argument("name", nargs="?", default="experiment",
                   help="experiment, policy, statement or hardware-classes")

    p = command("hardware", "list the built-in hardware classes and what this host has",
                "xrun hardware --json", _cmd_hardware)
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = command("reproduce", "re-run what an attestation records and compare the outputs (CI)",
                "xrun reproduce .xrun/runs/RUN/provenance.intoto.jsonl --key xrun.pub --rtol 1e-6", _cmd_reproduce)
    _attestation_args(p, "verify the attestation before re-running")
    p.add_argument("--manifest", type=Path, help="the manifest to re-run (its digest must match the recorded one)")
    p.add_argument("--signing-key", type=Path, help="key that signs the new run's attestation")
    p.add_argument("--rtol", type=float, help="relative tolerance for metrics files")
    p.add_argument("--atol", type=float, help="absolute tolerance for metrics files")
    p.add_argument("--tolerance", choices=["metrics"], help="accepted for clarity: tolerances apply to metrics only")
    p.add_argument("--runs-dir", type=Path, help="where the new run directory goes")
    p.add_argument("--allow-hardware-mismatch", action="store_true", help="re-run even on a host outside the class")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="do not stream the training log")
    _mlflow_arg(p)
    _verify_data_arg(p)

    p = command("build", "build (or find in the image cache) the hermetic image of an experiment",
                "xrun build experiment.yaml --json", _cmd_build)
    _manifest_arg(p)
    p.add_argument("--json", action="store_true", help="print the image as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no build log")
    p.add_argument("--oci-layout", type=Path, metavar="DIR",
                   help="also write the image (base layers included) as an OCI image layout in DIR")
    p.add_argument("--push", metavar="REGISTRY/REPO",
                   help="push the image by digest (e.g. 127.0.0.1:5000/team/exp); later runs attest the digest")
    _verify_data_arg(p)

    p = command("rebuild", "rebuild the image an attestation records from its recorded inputs and compare the "
                "image ID (auditors)", "xrun rebuild .xrun/runs/RUN/provenance.intoto.jsonl --key xrun.pub "
                "--code ./checkout\n\nexit 0 identical · 3 different (what differs is named: base, package, wheel, "
                "code file, layer) or the attestation does not verify · 4 an input cannot be had", _cmd_rebuild)
    _attestation_args(p, "verify the attestation first")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress")

    p = command("fetch", "fetch and verify every data item into the content-addressed cache",
                "xrun fetch experiment.yaml --json", _cmd_fetch)
    _manifest_arg(p)
    p.add_argument("--json", action="store_true", help="print the fetched items as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--retries", type=int, default=5, help="retries per item on transient faults (default 5)")
    p.add_argument("--parallel", type=int, default=4, help="downloads at once (default 4)")
    _verify_data_arg(p)

    data = command("data", "work with directory datasets", "xrun data digest ./images --write",
                   lambda a: _help(data))
    q = data.add_subparsers(title="data commands", metavar="SUBCOMMAND").add_parser(
        "digest", help="print the tree digest of a folder (directory.treeDigest) and its listing",
        description="Hash every file of DIR into the canonical listing (docs/data-sources.md) and print its tree "
                    "digest, for `directory: {uri: …, treeDigest: …}`.",
        epilog="example: xrun data digest ./images --write   (then upload images/ with its .xrun-tree.json)")
    q.set_defaults(handler=_cmd_data_digest)
    q.add_argument("dir", type=Path, help="the dataset's folder")
    q.add_argument("--json", action="store_true", help="print the listing as JSON (the .xrun-tree.json format)")
    q.add_argument("--write", action="store_true", help="also write DIR/.xrun-tree.json (needed beside remote data)")

    cache = command("cache", "inspect and maintain the content-addressed cache", "xrun cache verify",
                    lambda a: _help(cache))
    cache_sub = cache.add_subparsers(title="cache commands", metavar="SUBCOMMAND")
    q = cache_sub.add_parser("ls", help="list cache entries, most recently used first")
    q.set_defaults(handler=_cmd_cache_ls)
    q.add_argument("--json", action="store_true", help="print as JSON")
    q = cache_sub.add_parser("verify", help="re-hash every entry (auditors); exit 3 when one is corrupt")
    q.set_defaults(handler=_cmd_cache_verify)
    q.add_argument("--remove-bad", action="store_true", help="delete corrupt entries")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q = cache_sub.add_parser("gc", help="remove entries no run used recently; keep what given manifests need")
    q.set_defaults(handler=_cmd_cache_gc)
    q.add_argument("--keep", type=Path, action="append", default=[], metavar="MANIFEST",
                   help="keep everything this manifest needs (repeatable)")
    q.add_argument("--older-than", type=_age, default=_age("30d"), metavar="AGE",
                   help="remove entries unused for this long: a number with s, m, h or d (default 30d; 1.5d, 90m)")
    q.add_argument("--dry-run", action="store_true", help="list what would be removed")
    q.add_argument("--json", action="store_true", help="print as JSON")

    p = command("keygen", "create a signing key pair (xrun.key, mode 0600, and xrun.pub)",
                "XRUN_KEY_PASSWORD=… xrun keygen --type ecdsa-p256 --out keys/", _cmd_keygen)
    p.add_argument("--type", dest="kind", choices=["ecdsa-p256", "ed25519"], default="ecdsa-p256",
                   help="key type (default ecdsa-p256: what cosign expects)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for xrun.key and xrun.pub")
    p.add_argument("--json", action="store_true", help="print the paths and keyid as JSON")

    p = command("verify", "verify an attestation offline: signature, structure, artifacts, policy",
                "xrun verify run/provenance.intoto.jsonl --key xrun.pub --artifact model.npy --policy policy.yaml",
                _cmd_verify)
    p.add_argument("attestation", type=Path, help="provenance.intoto.jsonl or provenance.sigstore.json")
    p.add_argument("--key", dest="keys", type=Path, action="append", default=[], help="trusted public key (repeatable)")
    p.add_argument("--artifact", dest="artifacts", type=Path, action="append", default=[],
                   help="a file whose sha256 must be among the subjects (repeatable)")
    p.add_argument("--policy", type=Path, help="policy file (YAML or JSON; `xrun schema policy`)")
    p.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned attestation (SLSA L1)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")

    _cluster_commands(command)

    runs = command("runs", "list, show and compare past runs", "xrun runs ls --manifest experiment.yaml",
                   lambda a: _help(runs))
    runs_sub = runs.add_subparsers(title="runs commands", metavar="SUBCOMMAND")
    for name, help_text, handler, nargs in (
        ("ls", "list runs (newest last)", _cmd_runs_ls, 0),
        ("show", "show one run (id, id prefix, path or 'latest')", _cmd_runs_show, 1),
        ("diff", "compare two runs side by side", _cmd_runs_diff, 2),
        ("summary", "per-metric mean, std, min, max and n across a seed sweep (SWEEP: its id), failed members "
                    "listed; example: xrun runs summary 20261129T1718Z-ab12cd --json", _cmd_runs_summary, 1),
    ):
        q = runs_sub.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(handler=handler)
        if nargs:
            q.add_argument("run", nargs=nargs, metavar="RUN")
        q.add_argument("--manifest", type=Path, default=Path("experiment.yaml"),
                       help="the experiment whose runs to use (default: ./experiment.yaml)")
        q.add_argument("--runs-dir", type=Path, help="the runs directory (default: <manifest folder>/.xrun/runs)")
        q.add_argument("--json", action="store_true", help="print as JSON")
    _tracking_and_report_commands(sub, runs_sub, command)
    return parser


# --- MLflow sync and the HTML report (runner/trackers, runner/report) ------------------------------------


def _tracking_and_report_commands(sub: Any, runs_sub: Any, command: Any) -> None:
    q = runs_sub.add_parser(
        "sync", help="send runs to MLflow that could not be logged when they ran (each exactly once)",
        description="send runs to MLflow: the given runs, or every run whose logging is pending (the server was "
                    "down); a run already logged is found by its xrun.runId tag and never sent twice; exit 4 when a run "
                    "could still not be sent (it stays pending)",
        epilog="example: xrun runs sync --manifest experiment.yaml --mlflow http://127.0.0.1:5000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    q.set_defaults(handler=_cmd_runs_sync)
    q.add_argument("run", nargs="*", metavar="RUN", help="run ids, id prefixes, paths or 'latest' (default: pending)")
    q.add_argument("--mlflow", metavar="URI", help="the MLflow tracking URI (default: where each run was meant to "
                                                   "go, else $MLFLOW_TRACKING_URI)")
    q.add_argument("--key", dest="keys", type=Path, action="append", default=[],
                   help="trusted public key: tag each run xrun.verified by checking its attestation (repeatable)")
    q.add_argument("--manifest", type=Path, default=Path("experiment.yaml"),
                   help="the experiment whose runs to use (default: ./experiment.yaml)")
    q.add_argument("--runs-dir", type=Path, help="the runs directory (default: <manifest folder>/.xrun/runs)")
    q.add_argument("--json", action="store_true", help="print as JSON")

    p = command("report", "write one self-contained HTML page about runs: metrics plots, outputs, provenance",
                "xrun report --sweep mnist --key xrun.pub --out report.html", _cmd_report)
    p.add_argument("run", nargs="*", metavar="RUN", help="run ids, id prefixes, paths or 'latest'")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME",
                   help="every finished run of the experiment NAME (e.g. one per seed; repeatable)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file (default: report.html)")
    p.add_argument("--key", dest="keys", type=Path, action="append", default=[],
                   help="trusted public key: show each run's verification result (repeatable)")
    p.add_argument("--manifest", type=Path, default=Path("experiment.yaml"),
                   help="the experiment whose runs to use (default: ./experiment.yaml)")
    p.add_argument("--runs-dir", type=Path, help="the runs directory (default: <manifest folder>/.xrun/runs)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def _cmd_runs_sync(args: argparse.Namespace) -> int:
    from runner.context import StderrProgress
    from runner.runs.store import find_run, list_runs
    from runner.trackers.track import sync_runs

    runs = [find_run(_runs_dir(args), ref) for ref in args.run] if args.run else list_runs(_runs_dir(args))
    results = sync_runs([r.path for r in runs], explicit=bool(args.run), flag_uri=args.mlflow, keys=args.keys,
                        progress=StderrProgress(args.json))
    if args.json:
        _print_json([r.to_json() for r in results])
    else:
        for r in results:
            print(f"run {r.run_id}: {r.state}" + (f" (MLflow run {r.mlflow_run_id}, {r.uri})" if r.mlflow_run_id else ""))
        if not results:
            print("nothing to send: no run is pending")
    return 0 if all(r.state != "pending" for r in results) else 4


def _cmd_report(args: argparse.Namespace) -> int:
    from runner.report.html import write_report

    written = write_report(_runs_dir(args), args.run, args.sweep, args.out, keys=args.keys)
    if args.json:
        _print_json(written.to_json())
    else:
        print(f"{written.path}: {len(written.run_ids)} run(s), {written.size_bytes // 1024} KiB")
    return 0


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _age(text: str) -> float:
    """'30d', '1.5d', '90m' → seconds; anything else is a usage error (exit 2) naming the accepted forms."""
    number, unit = text[:-1], text[-1:]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in AGE_UNITS or not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: use a number followed by s, m, h or d "
                                         "(for example 90m, 12h, 1.5d, 30d)")
    return value * AGE_UNITS[unit]


def _attestation_args(p: argparse.ArgumentParser, key_use: str) -> None:
    """ATTESTATION, --code DIR and --key PUB: what `reproduce` and `rebuild` read."""
    p.add_argument("attestation", type=Path, help="provenance.intoto.jsonl or provenance.sigstore.json")
    p.add_argument("--code", type=Path, metavar="DIR",
                   help="the code folder (checked against the recorded code digest; default: the recorded run's "
                        "folder, from run.json beside the attestation), e.g. --code ./")
    p.add_argument("--key", dest="keys", type=Path, action="append", default=[],
                   help=f"trusted public key: {key_use} (repeatable)")


def _manifest_arg(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument("manifest", nargs="+" if many else None, metavar="MANIFEST", help="the experiment manifest (YAML)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object describing the run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or streamed logs")
    p.add_argument("--key", type=Path, help="signing key (PEM; default: $XRUN_SIGNING_KEY; none: unsigned)")
    p.add_argument("--runs-dir", type=Path, help="where run directories go (default: <manifest folder>/.xrun/runs)")
    p.add_argument("--allow-hardware-mismatch", action="store_true",
                   help="run even if this host cannot satisfy the hardware class, and record that")
    _mlflow_arg(p)
    _verify_data_arg(p)


def _mlflow_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", metavar="URI", help="also log the run to this MLflow tracking server (default: "
                   "$MLFLOW_TRACKING_URI, else the manifest's tracking.mlflow.uri; needs `pip install 'xrun[mlflow]'`)")


def _verify_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify-data", action="store_true",
                   help="re-hash every cached input (data, unpacked archives, wheels) before use instead of "
                        "trusting its fingerprint (auditors; CI: XRUN_VERIFY_DATA=1)")


def _verify_data(args: argparse.Namespace) -> bool:
    """--verify-data, or XRUN_VERIFY_DATA=1 (the CI setting)."""
    from runner.fetch.interface import verify_requested

    return bool(args.verify_data) or verify_requested(os.environ)


def _run_options_from(args: argparse.Namespace) -> Any:
    from runner.fetch import FetchOptions
    from runner.context import RunOptions

    password = os.environ.get("XRUN_KEY_PASSWORD")
    return RunOptions(runs_dir=args.runs_dir, key=args.key, key_password=password.encode() if password else None,
                      allow_hardware_mismatch=args.allow_hardware_mismatch, quiet=args.quiet or args.json,
                      fetch=FetchOptions(quiet=args.quiet or args.json, verify=_verify_data(args)), mlflow=args.mlflow)


# --- handlers --------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    from runner.manifest import load_manifest

    results = []
    failed: XrunError | None = None
    for path in args.manifest:
        try:
            m = load_manifest(path)
            results.append({"manifest": path, "valid": True, "name": m.name, "sha256": m.sha256, "problems": []})
        except XrunError as exc:
            failed = failed or exc
            results.append({"manifest": path, "valid": False, "problems": exc.lines or [exc.message]})
            if not args.json:
                _error(exc.message, exc.lines)
    if args.json:
        _print_json(results if len(results) > 1 else results[0])
    else:
        for r in results:
            if r["valid"]:
                print(f"{r['manifest']}: valid ({r['name']}, sha256:{r['sha256'][:12]})")
    return failed.exit_code if failed else 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from runner.manifest import load_manifest
    from runner.plan import resolve_plan

    plan = resolve_plan(load_manifest(args.manifest))
    data = plan.to_json()
    if args.json:
        _print_json({"digest": plan.digest, "buildDigest": plan.build_digest, "plan": data})
        return 0
    print(text.plan_summary(data, plan.digest))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from runner.resources import resource_dir

    names = {"experiment": "experiment.schema.json", "policy": "policy.schema.json",
             "statement": "statement.schema.json", "hardware-classes": "hardware-classes.json"}
    if args.name not in names:
        raise XrunError(f"unknown schema {args.name!r}; choose one of: {', '.join(names)}")
    sys.stdout.write((resource_dir("schemas") / names[args.name]).read_text(encoding="utf-8"))
    return 0


def _cmd_hardware(args: argparse.Namespace) -> int:
    from runner import hardware

    host = hardware.detect_host()
    classes = hardware.catalog()
    if args.json:
        _print_json({"classes": {n: c.to_json() for n, c in classes.items()}, "host": host.to_json(),
                     "fits": {n: not hardware.shortfalls(c, host) for n, c in classes.items()}})
        return 0
    print(text.hardware_catalog(classes.values(), host, {n: not hardware.shortfalls(c, host) for n, c in classes.items()}))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from runner.pipeline import run_experiment

    summary = run_experiment(Path(args.manifest), _run_options_from(args))
    if args.json:
        _print_json(summary.to_json())
    else:
        print(text.run_summary(summary))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from runner.build.image import build_image
    from runner.engine.client import docker_client
    from runner.fetch import Cache, FetchOptions
    from runner.manifest import load_manifest
    from runner.plan import resolve_plan

    from runner.build.export import parse_repository, publish

    if args.push:
        parse_repository(args.push)  # a bad target is exit 2 before anything is built
    plan = resolve_plan(load_manifest(args.manifest))
    quiet = args.quiet or args.json
    cache, client = Cache.default(), docker_client()
    image = build_image(plan, cache, client, quiet=quiet, fetch=FetchOptions(quiet=quiet, verify=_verify_data(args)))
    out = publish(image, client, cache, plan.build_digest, oci_layout=args.oci_layout, push=args.push)
    image = out.image
    if args.json:
        _print_json({**image.to_json(), "ociLayout": str(out.oci_layout) if out.oci_layout else None,
                     "ociManifestDigest": out.manifest_digest})
    else:
        print(image.id)
        print(f"{image.tag} ({'cached: nothing built' if image.cached else 'built'}, {len(image.wheels)} wheels)",
              file=sys.stderr)
        if out.oci_layout:
            print(f"OCI layout {out.oci_layout} (manifest {out.manifest_digest})", file=sys.stderr)
        if image.pushed_to:
            print(f"pushed {image.pushed_to}@{image.manifest_digest}", file=sys.stderr)
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from runner.build.rebuild import rebuild, render_text
    from runner.errors import EXIT_INTEGRITY

    report = rebuild(args.attestation, code=args.code, keys=args.keys, quiet=args.quiet or args.json)
    if args.json:
        _print_json(report.to_json())
    else:
        print(render_text(report))
    return 0 if report.identical else EXIT_INTEGRITY


def _cmd_fetch(args: argparse.Namespace) -> int:
    from runner.fetch import Cache, FetchOptions, fetch_data
    from runner.manifest import load_manifest
    from runner.plan import resolve_plan

    plan = resolve_plan(load_manifest(args.manifest))
    options = FetchOptions(retries=args.retries, parallel=args.parallel, quiet=args.quiet or args.json,
                           verify=_verify_data(args))
    items = fetch_data(plan, Cache.default(), options)
    if args.json:
        _print_json([i.to_json() for i in items])
        return 0
    print(text.fetched(items))
    return 0


def _cmd_data_digest(args: argparse.Namespace) -> int:
    from runner.fetch.sources.listing import digest_directory, write_listing
    from runner.fetch.sources.render import digest_text

    files = digest_directory(args.dir)
    listing = write_listing(args.dir, files) if args.write else None
    if args.json:
        from runner.fetch.sources.listing import listing_json

        _print_json(listing_json(files))
    else:
        print(digest_text(files, listing))
    return 0


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    from runner.fetch import Cache, list_cache

    cache = Cache.default()
    entries = list_cache(cache)
    if args.json:
        _print_json({"root": str(cache.root), "entries": [e.to_json() for e in entries]})
        return 0
    print(text.cache_entries(cache.root, entries))
    return 0


def _cmd_cache_verify(args: argparse.Namespace) -> int:
    from runner.errors import EXIT_INTEGRITY
    from runner.fetch import Cache, verify_cache

    results = verify_cache(Cache.default(), remove_bad=args.remove_bad)
    bad = [r for r in results if not r.ok]
    if args.json:
        _print_json({"ok": not bad, "entries": [r.to_json() for r in results]})
    else:
        print(text.cache_verified(results))
    return EXIT_INTEGRITY if bad else 0


def _cmd_cache_gc(args: argparse.Namespace) -> int:
    from runner.fetch import Cache, gc_cache, keep_for_manifest
    from runner.manifest import load_manifest

    keep: set[tuple[str, str]] = set()
    for path in args.keep:
        keep |= keep_for_manifest(load_manifest(path))
    removed = gc_cache(Cache.default(), keep=keep, older_than_s=args.older_than, dry_run=args.dry_run)
    if args.json:
        _print_json({"dryRun": args.dry_run, "removed": [r.to_json() for r in removed]})
        return 0
    print(text.cache_collected(removed, args.dry_run))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from runner.attest import generate_keypair, load_verifier

    password = os.environ.get("XRUN_KEY_PASSWORD")
    key_path, pub_path = generate_keypair(args.kind, args.out, password.encode() if password else None)
    kid = load_verifier(pub_path).keyid
    if args.json:
        _print_json({"key": str(key_path), "pub": str(pub_path), "keyid": kid, "type": args.kind,
                     "encrypted": bool(password)})
    else:
        print(f"wrote {key_path} (private, mode 0600{', encrypted' if password else ''}) and {pub_path}")
        print(f"keyid {kid}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from runner.attest import load_policy, verify_attestation

    if not args.keys and not args.allow_unsigned:
        raise XrunError("give at least one trusted public key with --key xrun.pub (or --allow-unsigned)")
    policy = load_policy(args.policy) if args.policy else None
    verdict = verify_attestation(args.attestation, args.keys, args.artifacts, policy,
                                 allow_unsigned=args.allow_unsigned)
    if args.json:
        _print_json(verdict.to_json())
    else:
        print("\n".join(verdict.lines()))
    return verdict.exit_code


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from runner.errors import EXIT_MISMATCH
    from runner.reproduce import reproduce

    args.key = args.signing_key  # --key here names trusted public keys; the new run signs with --signing-key
    report = reproduce(args.attestation, manifest=args.manifest, keys=args.keys, rtol=args.rtol, atol=args.atol,
                       options=_run_options_from(args), code=args.code)
    if args.json:
        _print_json(report.to_json())
    else:
        print(text.reproduction(report))
    return 0 if report.reproduced else EXIT_MISMATCH


def _runs_dir(args: argparse.Namespace) -> Path:
    from runner.rundir import default_runs_dir

    return args.runs_dir or default_runs_dir(args.manifest.absolute().parent)


def _cmd_runs_ls(args: argparse.Namespace) -> int:
    from runner.runs.store import list_runs

    from runner.submit import refresh

    runs = list_runs(_runs_dir(args))
    runs = [dataclasses.replace(r, record=refresh(r.path) or r.record) for r in runs]  # cluster runs: ask the scheduler
    if args.json:
        _print_json([r.to_json() for r in runs])
        return 0
    print(text.runs_list(runs, _runs_dir(args)))
    return 0


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from runner.runs.store import find_run

    run = find_run(_runs_dir(args), args.run[0])
    if args.json:
        _print_json({"runDir": str(run.path), "record": run.record.to_json(), "plan": run.plan})
        return 0
    print(text.run_details(run))
    return 0


def _cmd_runs_diff(args: argparse.Namespace) -> int:
    from runner.runs.store import diff_runs, find_run

    a, b = (find_run(_runs_dir(args), ref) for ref in args.run)
    diff = diff_runs(a, b)
    if args.json:
        _print_json(diff)
        return 0
    print(text.runs_diff(a, b, diff))
    return 0




# --- clusters: submit, node-run, collect, wait, cancel, logs, runs summary (runner/submit.py) ------


def _cluster_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("submit", "run the experiment through a cluster's scheduler (Slurm), render Kubernetes Jobs, or "
                "sweep seeds (one job array; one run and attestation per seed)",
                "xrun submit experiment.yaml --backend slurm --shared-dir /shared/xrun --seeds 1-10 --partition gpu",
                _cmd_submit)
    _manifest_arg(p)
    _run_options(p)
    p.add_argument("--backend", choices=["slurm", "kubernetes", "local"], default="slurm",
                   help="where the runs go (default slurm; local: this host, in sequence or --parallel N)")
    p.add_argument("--seeds", help="a seed sweep: 1-10 or 1,5,9; each seed replaces seeds.global in its own run")
    p.add_argument("--shared-dir", type=Path, help="a directory every node mounts at the same path: the verified "
                   "data cache and the image archive go there (default: $XRUN_CACHE_DIR)")
    p.add_argument("--registry", metavar="HOST[:PORT]/REPO",
                   help="push the image there; nodes pull it by digest (default: ship it through --shared-dir)")
    p.add_argument("--partition", help="Slurm partition (sbatch --partition)")
    p.add_argument("--account", help="Slurm account (sbatch --account)")
    p.add_argument("--qos", help="Slurm QOS (sbatch --qos)")
    p.add_argument("--sbatch-arg", dest="sbatch_args", action="append", default=[], metavar="OPTION",
                   help="an extra #SBATCH line, e.g. --sbatch-arg=--constraint=a100 (repeatable)")
    p.add_argument("--parallel", type=int, default=1, help="local backend: runs at once (default 1)")
    p.add_argument("--wait", action="store_true", help="wait for the jobs, then check and sign their attestations")
    p.add_argument("--render", type=Path, metavar="DIR", help="kubernetes: write the manifests to DIR, submit nothing")

    p = command("node-run", "(run by the job script on a compute node) run a directory prepared by xrun submit",
                "xrun node-run /shared/runs/20261129T171800Z-ab12cd", _cmd_node_run)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    for name, help_text, example, handler in (
        ("collect", "check a finished cluster run's outputs against the node's statement and sign it here",
         "xrun collect latest --key xrun.key", _cmd_collect),
        ("wait", "wait until a cluster run's job ends, then collect it (sign with --key)",
         "xrun wait 20261129T171800Z-ab12cd --key xrun.key", _cmd_wait),
        ("cancel", "cancel a cluster run's job (scancel)", "xrun cancel 20261129T171800Z-ab12cd", _cmd_cancel),
        ("logs", "print a cluster run's job log (-f: follow until the job ends)", "xrun logs latest -f", _cmd_logs),
    ):
        q = command(name, help_text, example, handler)
        q.add_argument("run", metavar="RUN", help="run id, id prefix, run directory or 'latest'")
        q.add_argument("--manifest", type=Path, default=Path("experiment.yaml"),
                       help="the experiment whose runs to use (default: ./experiment.yaml)")
        q.add_argument("--runs-dir", type=Path, help="the runs directory (default: <manifest folder>/.xrun/runs)")
        if name in ("collect", "wait"):
            q.add_argument("--key", type=Path, help="signing key (default: $XRUN_SIGNING_KEY; none: unsigned)")
            q.add_argument("--json", action="store_true", help="print as JSON")
        if name == "logs":
            q.add_argument("-f", "--follow", action="store_true", help="follow the log until the job ends")


def _cmd_submit(args: argparse.Namespace) -> int:
    from runner.submit import SubmitOptions, format_submit, parse_seeds, submit

    options = SubmitOptions(
        run=_run_options_from(args), backend=args.backend, seeds=parse_seeds(args.seeds) if args.seeds else (),
        shared_dir=args.shared_dir, registry=args.registry, partition=args.partition, account=args.account,
        qos=args.qos, sbatch_args=tuple(args.sbatch_args), parallel=max(1, args.parallel), wait=args.wait,
        render=args.render)
    result = submit(Path(args.manifest), options)
    if args.json:
        _print_json(result.to_json())
    else:
        print(format_submit(result))
    failed = [r for r in result.runs if r.state not in ("pending", "succeeded", "completed")]
    return 1 if failed and (args.wait or args.backend == "local") else 0


def _cmd_node_run(args: argparse.Namespace) -> int:
    from runner.backends.node import node_run

    summary = node_run(args.run_dir)
    print(f"xrun: run {summary.run_id} succeeded on this node; the statement awaits signing by the submitter "
          "(xrun collect)", file=sys.stderr)
    return 0


def _cluster_run(args: argparse.Namespace) -> Path:
    from runner.runs.store import find_run

    return find_run(_runs_dir(args), args.run).path


def _cmd_collect(args: argparse.Namespace) -> int:
    from runner.submit import collect

    password = os.environ.get("XRUN_KEY_PASSWORD")
    result = collect(_cluster_run(args), key=args.key, key_password=password.encode() if password else None)
    return _print_collected(args, result)


def _cmd_wait(args: argparse.Namespace) -> int:
    from runner.submit import wait_run

    password = os.environ.get("XRUN_KEY_PASSWORD")
    result = wait_run(_cluster_run(args), key=args.key, key_password=password.encode() if password else None)
    return _print_collected(args, result)


def _print_collected(args: argparse.Namespace, result: Any) -> int:
    from runner.wire import to_wire

    if args.json:
        _print_json(to_wire(result))
    else:
        print(f"run {result.run_id}: {result.state}" + (f", attestation {result.attestation}" if result.attestation
                                                        else f" ({result.error})" if result.error else ""))
    return 0 if result.attestation else 1


def _cmd_cancel(args: argparse.Namespace) -> int:
    from runner.submit import cancel_run

    record = cancel_run(_cluster_run(args))
    job = record.scheduler.job_ref if record.scheduler else "?"
    print(f"run {record.run_id}: cancel requested for job {job}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    from runner.submit import stream_log

    stream_log(_cluster_run(args), sys.stdout, follow=args.follow)
    return 0


def _cmd_runs_summary(args: argparse.Namespace) -> int:
    from runner.submit import format_sweep, summarize_sweep

    summary = summarize_sweep(_runs_dir(args), args.run[0])
    if args.json:
        _print_json(summary.to_json())
    else:
        print(format_sweep(summary))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
