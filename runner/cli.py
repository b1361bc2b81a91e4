"""The `xrun` command line: argument parsing and printing only; the logic lives in the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from runner import __version__
from runner.errors import EXIT_INTERRUPTED, XrunError
from runner.interrupts import interrupts_raise

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


def _error(message: str, lines: list[str] | None = None) -> None:
    print(f"xrun: error: {message}", file=sys.stderr)
    for line in lines or ():
        print(f"  {line}", file=sys.stderr)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*map(str, r)).rstrip() for r in [header, *rows])


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
    p.add_argument("attestation", type=Path, help="provenance.intoto.jsonl or provenance.sigstore.json")
    p.add_argument("--manifest", type=Path, help="the manifest to re-run (its digest must match the recorded one)")
    p.add_argument("--code", type=Path, metavar="DIR",
                   help="the code folder to re-run (checked against the recorded code digest; default: the recorded "
                        "run's folder, from run.json beside the attestation), e.g. --code ./")
    p.add_argument("--key", dest="keys", type=Path, action="append", default=[],
                   help="trusted public key: verify the attestation before re-running (repeatable)")
    p.add_argument("--signing-key", type=Path, help="key that signs the new run's attestation")
    p.add_argument("--rtol", type=float, help="relative tolerance for metrics files")
    p.add_argument("--atol", type=float, help="absolute tolerance for metrics files")
    p.add_argument("--tolerance", choices=["metrics"], help="accepted for clarity: tolerances apply to metrics only")
    p.add_argument("--runs-dir", type=Path, help="where the new run directory goes")
    p.add_argument("--allow-hardware-mismatch", action="store_true", help="re-run even on a host outside the class")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="do not stream the training log")
    _verify_data_arg(p)

    p = command("build", "build (or find in the image cache) the hermetic image of an experiment",
                "xrun build experiment.yaml --json", _cmd_build)
    _manifest_arg(p)
    p.add_argument("--json", action="store_true", help="print the image as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no build log")
    _verify_data_arg(p)

    p = command("fetch", "fetch and verify every data item into the content-addressed cache",
                "xrun fetch experiment.yaml --json", _cmd_fetch)
    _manifest_arg(p)
    p.add_argument("--json", action="store_true", help="print the fetched items as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--retries", type=int, default=5, help="retries per item on transient faults (default 5)")
    p.add_argument("--parallel", type=int, default=4, help="downloads at once (default 4)")
    _verify_data_arg(p)

    cache = command("cache", "inspect and maintain the content-addressed cache", "xrun cache verify",
                    lambda a: (cache.print_help(), 2)[1])
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
                   lambda a: (runs.print_help(), 2)[1])
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
    return parser


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


def _manifest_arg(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument("manifest", nargs="+" if many else None, metavar="MANIFEST", help="the experiment manifest (YAML)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object describing the run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or streamed logs")
    p.add_argument("--key", type=Path, help="signing key (PEM; default: $XRUN_SIGNING_KEY; none: unsigned)")
    p.add_argument("--runs-dir", type=Path, help="where run directories go (default: <manifest folder>/.xrun/runs)")
    p.add_argument("--allow-hardware-mismatch", action="store_true",
                   help="run even if this host cannot satisfy the hardware class, and record that")
    _verify_data_arg(p)


def _verify_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify-data", action="store_true",
                   help="re-hash every cached input (data, unpacked archives, wheels) before use instead of "
                        "trusting its fingerprint (auditors; CI: XRUN_VERIFY_DATA=1)")


def _verify_data(args: argparse.Namespace) -> bool:
    """--verify-data or XRUN_VERIFY_DATA=1; exported so stages building their own fetch options (wheels) see it."""
    from runner.fetch.interface import VERIFY_ENV, verify_requested

    if args.verify_data:
        os.environ[VERIFY_ENV] = "1"
    return verify_requested(os.environ)


def _run_options_from(args: argparse.Namespace) -> Any:
    from runner.fetch import FetchOptions
    from runner.context import RunOptions

    password = os.environ.get("XRUN_KEY_PASSWORD")
    return RunOptions(runs_dir=args.runs_dir, key=args.key, key_password=password.encode() if password else None,
                      allow_hardware_mismatch=args.allow_hardware_mismatch, quiet=args.quiet or args.json,
                      fetch=FetchOptions(quiet=args.quiet or args.json, verify=_verify_data(args)))


def _print_summary(summary: Any) -> None:
    print(f"run {summary.run_id}: {summary.status}")
    print(f"  run dir     {summary.run_dir}")
    print(f"  image       {summary.image_id}")
    for path, digest in summary.outputs.items():
        print(f"  output      {path}  sha256:{digest[:16]}")
    for path, values in summary.metrics.items():
        shown = ", ".join(f"{k}={v:.6g}" for k, v in list(values.items())[:6])
        print(f"  metrics     {path}: {shown}")
    signed = f"signed, keyid {summary.keyid}" if summary.signed else "UNSIGNED"
    print(f"  attestation {summary.attestation} ({signed})")


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
    print(format_plan(data, plan.digest))
    return 0


def format_plan(data: dict[str, Any], digest: str) -> str:
    """A human-readable summary of a plan."""
    img = data["image"]
    base = img["base"]["reference"] if img["base"] else f"bootstrap {img['bootstrap']['suite']}: " + ", ".join(
        img["bootstrap"]["packages"])
    lines = [f"plan {digest[:12]}  {data['name']}", f"  image      {base}"]
    if data["lockfile"]:
        lk = data["lockfile"]
        lines.append(f"  lockfile   {lk['path']} ({lk['format']}, {len(lk['packages'])} packages, sha256:{lk['sha256'][:12]})")
    code = data["code"]
    git = f", git {code['gitCommit'][:12]}{' dirty' if code['gitDirty'] else ''}" if code["gitCommit"] else ""
    lines.append(f"  code       {code['path']} ({code['files']} files, {code['digest'][:19]}{git})")
    for d in data["data"]:
        algo, hexd = next(iter(d["digests"].items()))
        lines.append(f"  data       {d['name']}: {d['uri']} → {d['containerPath']} ({algo}:{hexd[:12]})")
    hw = data["hardware"]
    lines.append(f"  hardware   {hw['name']}: {hw['description']}")
    lines.append(f"  seeds      global={data['seeds']['global']} apply={data['seeds']['apply']}")
    lines.append(f"  command    {' '.join(data['run']['command'])}")
    timeout = data["run"]["timeoutSeconds"]
    lines.append(f"  timeout    {f'{timeout}s' if timeout else 'none'}")
    for o in data["outputs"]:
        lines.append(f"  output     /outputs/{o['path']}{' (metrics)' if o['metrics'] else ''}")
    return "\n".join(lines)


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
    rows = [[c.name, c.cpus, c.memory_gib, c.gpus, c.gpu_model or "-", "yes" if not hardware.shortfalls(c, host) else "no",
             c.description] for c in classes.values()]
    print(_table(rows, ["CLASS", "CPUS", "MEM GiB", "GPUS", "GPU MODEL", "FITS HOST", "DESCRIPTION"]))
    gpus = ", ".join(g.name for g in host.gpus) or "none"
    print(f"\nhost: {host.cpu_count} × {host.cpu_model}, {host.memory_bytes / 2**30:.1f} GiB, GPUs: {gpus}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from runner.pipeline import run_experiment

    summary = run_experiment(Path(args.manifest), _run_options_from(args))
    if args.json:
        _print_json(summary.to_json())
    else:
        _print_summary(summary)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from runner.docker_client import docker_client
    from runner.fetch import Cache
    from runner.build.image import build_image
    from runner.manifest import load_manifest
    from runner.plan import resolve_plan

    _verify_data(args)  # through the environment: the image stage makes its own fetch options for wheels
    plan = resolve_plan(load_manifest(args.manifest))
    image = build_image(plan, Cache.default(), docker_client(), quiet=args.quiet or args.json)
    if args.json:
        _print_json(image.to_json())
    else:
        print(image.id)
        print(f"{image.tag} ({'cached: nothing built' if image.cached else 'built'}, {len(image.wheels)} wheels)",
              file=sys.stderr)
    return 0


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
    rows = [[i.name, f"{i.algorithm}:{i.hexdigest[:12]}", i.size, "hit" if i.cache_hit else "fetched",
             i.container_path] for i in items]
    print(_table(rows, ["DATA", "DIGEST", "BYTES", "CACHE", "IN RUN"]) if rows else "no data items")
    return 0


def _cmd_cache_ls(args: argparse.Namespace) -> int:
    from runner.fetch import Cache, list_cache

    cache = Cache.default()
    entries = list_cache(cache)
    if args.json:
        _print_json({"root": str(cache.root), "entries": [e.to_json() for e in entries]})
        return 0
    rows = [[e.kind, e.digest[:23], e.size, e.files if e.files is not None else "-", _ago(e.last_used)]
            for e in entries]
    print(_table(rows, ["KIND", "DIGEST", "BYTES", "FILES", "LAST USED"]) if rows else f"cache {cache.root} is empty")
    return 0


def _ago(epoch: float) -> str:
    import time

    seconds = max(0, time.time() - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _cmd_cache_verify(args: argparse.Namespace) -> int:
    from runner.errors import EXIT_INTEGRITY
    from runner.fetch import Cache, verify_cache

    results = verify_cache(Cache.default(), remove_bad=args.remove_bad)
    bad = [r for r in results if not r.ok]
    if args.json:
        _print_json({"ok": not bad, "entries": [r.to_json() for r in results]})
    else:
        for r in results:
            print(f"{'OK  ' if r.ok else 'BAD '} {r.entry.digest}" + (f"  {'; '.join(r.problems)}" if r.problems else "")
                  + ("  (removed)" if r.removed else ""))
        print(f"{len(results) - len(bad)} of {len(results)} entries intact")
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
    for r in removed:
        print(f"{'would remove' if args.dry_run else 'removed'} {r.kind} {r.digest or r.path} ({r.size} bytes)")
    print(f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} {'to remove' if args.dry_run else 'removed'}, "
          f"{sum(r.size for r in removed)} bytes")
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
        print(format_report(report))
    return 0 if report.reproduced else EXIT_MISMATCH


def format_report(report: Any) -> str:
    """The reproduction report: one row per output, metric tables, changed inputs, the verdict."""
    rows = [[r.path, r.state.upper(), (r.recorded or "-")[:16], (r.now or "-")[:16]] for r in report.outputs]
    lines = [_table(rows, ["OUTPUT", "STATE", "RECORDED", "NOW"])]
    for r in report.outputs:
        if r.metrics:
            lines.append(f"\nmetrics {r.path}:")
            mrows = [[m.key, _num(m.recorded), _num(m.now), _num(m.abs_diff), _num(m.rel_diff), "ok" if m.ok else "DIFF"]
                     for m in r.metrics]
            lines.append(_table(mrows, ["KEY", "RECORDED", "NOW", "ABS DIFF", "REL DIFF", ""]))
    if report.changes and not report.reproduced:
        lines.append("\nrecorded inputs that changed:")
        for c in report.changes:
            detail = f": {json.dumps(c.recorded, default=str)} → {json.dumps(c.now, default=str)}" if (
                c.recorded is not None or c.now is not None) else ""
            lines.append(f"  {c.name}{detail}")
    verdict = "REPRODUCED" if report.reproduced else "NOT REPRODUCED"
    lines.append(f"\n{verdict} (new run {report.run_id} in {report.run_dir})")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


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
    rows = []
    for r in runs:
        j = r.to_json()
        metrics = "; ".join(f"{k}={v:.4g}" for values in j["metrics"].values() for k, v in list(values.items())[:2])
        digests = " ".join(f"{p}:{d[:8]}" for p, d in list(j["outputs"].items())[:2])
        sched = r.record.scheduler
        status = j["status"] if sched is None or sched.backend == "local" else f"{j['status']} ({sched.state})"
        rows.append([r.run_id, j["name"], status, j["startedOn"] or "-",
                     f"{j['durationSeconds']:.0f}s" if j["durationSeconds"] is not None else "-", metrics or "-",
                     digests or "-"])
    print(_table(rows, ["RUN", "NAME", "STATUS", "STARTED", "DURATION", "METRICS", "OUTPUTS"]) if rows
          else f"no runs under {_runs_dir(args)}")
    return 0


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from runner.runs.store import find_run

    run = find_run(_runs_dir(args), args.run[0])
    if args.json:
        _print_json({"runDir": str(run.path), "record": run.record.to_json(), "plan": run.plan})
        return 0
    record = run.record.to_json()
    print(f"run {run.run_id} ({run.path})")
    for key in ("name", "status", "startedOn", "finishedOn", "exitCode", "imageId", "planDigest", "hardwareClass"):
        print(f"  {key:<12} {record.get(key, '-')}")
    for path, digest in run.record.outputs.items():
        print(f"  output       {path} sha256:{digest}")
    for path, values in run.record.metrics.items():
        print(f"  metrics      {path}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    if run.record.error:
        print(f"  error        {run.record.error}")
    return 0


def _cmd_runs_diff(args: argparse.Namespace) -> int:
    from runner.runs.store import diff_runs, find_run

    a, b = (find_run(_runs_dir(args), ref) for ref in args.run)
    diff = diff_runs(a, b)
    if args.json:
        _print_json(diff)
        return 0
    print(f"a = {a.run_id}\nb = {b.run_id}")
    for section in ("manifest", "plan", "host"):
        if diff[section]:
            print(f"{section} fields that differ: {', '.join(diff[section])}")
    for path, d in diff["outputs"].items():
        print(f"output {path}: {str(d['a'])[:16]} → {str(d['b'])[:16]}")
    for key, d in diff["metrics"].items():
        print(f"metric {key}: {d['a']} → {d['b']}")
    if not any(diff[k] for k in ("manifest", "plan", "host", "outputs", "metrics")):
        print("no differences")
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
    print(f"run {record.run_id}: cancel requested for job {record.scheduler.job_ref}")
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
