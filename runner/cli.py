"""The `xrun` command line: argument parsing and printing only; the logic lives in the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from runner import __version__
from runner.errors import EXIT_INTERRUPTED, XrunError

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
    try:
        return args.handler(args)
    except XrunError as exc:
        _error(exc.message, exc.lines)
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
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
    return "\n".join([fmt.format(*header), *(fmt.format(*map(str, r)) for r in rows)]).rstrip()


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
    return parser


def _manifest_arg(p: argparse.ArgumentParser, many: bool = False) -> None:
    p.add_argument("manifest", nargs="+" if many else None, metavar="MANIFEST", help="the experiment manifest (YAML)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object describing the run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or streamed logs")


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
    from runner.manifest import load_manifest
    from runner.plan import resolve_plan

    plan = resolve_plan(load_manifest(args.manifest))
    print(f"plan {plan.digest[:12]} resolved; the run stage is not built yet: stopping after planning",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
