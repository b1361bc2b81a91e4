"""The `xrun` command line: the parser and the dispatcher; each command lives in `commands/`.

`main` builds the parser from the shared parents in `args.py`, then imports only the chosen
command's module (`commands/<module>.py`), so `xrun --version` and `--help` load no library code.
A command module parses its arguments into the library's options, calls the library and hands the
typed result to a renderer in `runner/report/` (text for people, JSON for machines).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from runner import __version__
from runner.cli import args as shared
from runner.cli.messages import print_error
from runner.errors import EXIT_INTERRUPTED, XrunError
from runner.interrupts import interrupts_raise

EXIT_INTERNAL = 70
EPILOG = """exit codes: 0 success · 1 training command or build failed · 2 bad usage or invalid manifest/policy ·
3 integrity failure (checksum, signature, policy) · 4 environment problem (no Docker engine, hardware,
unreachable data) · 5 reproduction mismatch · 130 interrupted"""
COMMANDS = "runner.cli.commands"

Command = Callable[..., argparse.ArgumentParser]


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
            return dispatch(args)
        except XrunError as exc:
            print_error(exc.message, exc.lines)
            return exc.exit_code
        except KeyboardInterrupt:
            print_error("interrupted: stopped; nothing was left half-written")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            return 0
        except Exception as exc:  # a bug of ours: say so plainly; the traceback only on request
            if os.environ.get("XRUN_DEBUG"):
                traceback.print_exc()
            print_error(f"internal error: {type(exc).__name__}: {exc} (a bug in xrun; rerun with XRUN_DEBUG=1 "
                        "for the traceback and report it)")
            return EXIT_INTERNAL


def dispatch(args: argparse.Namespace) -> int:
    """Import the chosen command's module (only that one) and run its handler."""
    handler: str = args.handler
    if handler.startswith("help:"):  # a command group called without its subcommand: its help, exit 2
        args.group_parser.print_help()
        return 2
    module, _, function = handler.partition(":")
    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"{COMMANDS}.{module}"), function)
    return run(args)


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


# --- the parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (handlers are named, not imported)."""
    parser = argparse.ArgumentParser(
        prog="xrun",
        description="Run an ML experiment hermetically from one manifest and attest what produced it.",
        epilog="example: xrun examples/quickstart/experiment.yaml\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"xrun {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, help_text: str, example: str, handler: str,
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example: {example}\n\n{EPILOG}",
                           formatter_class=argparse.RawDescriptionHelpFormatter, parents=list(parents))
        p.set_defaults(handler=handler)
        return p

    _pipeline_commands(command)
    _data_and_cache_commands(command)
    _attestation_commands(command)
    _cluster_commands(command)
    _runs_commands(command)
    return parser


def _group(command: Command, name: str, help_text: str, example: str, title: str) -> argparse._SubParsersAction:
    """A command with subcommands (`data`, `cache`, `runs`); alone it prints its help and exits 2."""
    group = command(name, help_text, example, f"help:{name}")
    group.set_defaults(group_parser=group)
    return group.add_subparsers(title=title, metavar="SUBCOMMAND")


def _pipeline_commands(command: Command) -> None:
    command("run", "fetch, build, run and attest an experiment (also: xrun FILE.yaml)",
            "xrun run experiment.yaml --key xrun.key --tsa https://freetsa.org/tsr", "run:run",
            [shared.manifest(), shared.run_options(), shared.tsa()])
    command("validate", "check a manifest against the schema and the rules a schema cannot express",
            "xrun validate experiment.yaml", "plan:validate", [shared.manifest(many=True), shared.json_flag()])
    command("plan", "resolve a manifest into a pinned plan without running anything, and show what of the code "
            "folder goes into the image (files, size, the five biggest; a warning over 100 MiB)",
            "xrun plan experiment.yaml --json", "plan:plan", [shared.manifest(), shared.json_flag()])
    p = command("schema", "print a JSON Schema shipped with xrun (default: the manifest's)",
                "xrun schema > experiment.schema.json", "catalog:schema")
    p.add_argument("name", nargs="?", default="experiment",
                   help="experiment, policy, statement or hardware-classes")
    command("hardware", "list the built-in hardware classes and what this host has",
            "xrun hardware --json", "catalog:hardware", [shared.json_flag()])

    p = command("build", "build (or find in the image cache) the hermetic image of an experiment",
                "xrun build experiment.yaml --json", "build:build",
                [shared.manifest(), shared.json_flag(), shared.quiet_flag(), shared.verify_data()])
    p.add_argument("--oci-layout", type=Path, metavar="DIR",
                   help="also write the image (base layers included) as an OCI image layout in DIR")
    p.add_argument("--push", metavar="REGISTRY/REPO",
                   help="push the image by digest (e.g. 127.0.0.1:5000/team/exp); later runs attest the digest")

    p = command("fetch", "fetch and verify every data item into the content-addressed cache",
                "xrun fetch experiment.yaml --json", "fetch:fetch",
                [shared.manifest(), shared.json_flag(), shared.quiet_flag(), shared.verify_data()])
    p.add_argument("--retries", type=int, default=5, help="retries per item on transient faults (default 5)")
    p.add_argument("--parallel", type=int, default=4, help="downloads at once (default 4)")


def _data_and_cache_commands(command: Command) -> None:
    data = _group(command, "data", "work with directory datasets", "xrun data digest ./images --write",
                  "data commands")
    q = data.add_parser(
        "digest", help="print the tree digest of a folder (directory.treeDigest) and its listing",
        description="Hash every file of DIR into the canonical listing (docs/data-sources.md) and print its tree "
                    "digest, for `directory: {uri: …, treeDigest: …}`.",
        epilog="example: xrun data digest ./images --write   (then upload images/ with its .xrun-tree.json)",
        parents=[shared.json_flag()])
    q.set_defaults(handler="fetch:data_digest")
    q.add_argument("dir", type=Path, help="the dataset's folder")
    q.add_argument("--write", action="store_true", help="also write DIR/.xrun-tree.json (needed beside remote data)")

    cache = _group(command, "cache", "inspect and maintain the content-addressed cache", "xrun cache verify",
                   "cache commands")
    q = cache.add_parser("ls", help="list cache entries, most recently used first", parents=[shared.json_flag()])
    q.set_defaults(handler="cache:ls")
    q = cache.add_parser("verify", help="re-hash every entry (auditors); exit 3 when one is corrupt",
                         parents=[shared.json_flag()])
    q.set_defaults(handler="cache:verify")
    q.add_argument("--remove-bad", action="store_true", help="delete corrupt entries")
    q = cache.add_parser("gc", help="remove entries no run used recently; keep what given manifests need",
                         parents=[shared.json_flag()])
    q.set_defaults(handler="cache:gc")
    q.add_argument("--keep", type=Path, action="append", default=[], metavar="MANIFEST",
                   help="keep everything this manifest needs (repeatable)")
    q.add_argument("--older-than", type=shared.age, default=shared.age("30d"), metavar="AGE",
                   help="remove entries unused for this long: a number with s, m, h or d (default 30d; 1.5d, 90m)")
    q.add_argument("--dry-run", action="store_true", help="list what would be removed")


def _attestation_commands(command: Command) -> None:
    p = command("keygen", "create a signing key pair (xrun.key, mode 0600, and xrun.pub)",
                "XRUN_KEY_PASSWORD=… xrun keygen --type ecdsa-p256 --out keys/", "keys:keygen", [shared.json_flag()])
    p.add_argument("--type", dest="kind", choices=["ecdsa-p256", "ed25519"], default="ecdsa-p256",
                   help="key type (default ecdsa-p256: what cosign expects)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for xrun.key and xrun.pub")

    p = command("verify", "verify an attestation (or a VSA) offline: signature, timestamp, structure, artifacts, "
                "policy; optionally sign a summary and register the model",
                "xrun verify run/provenance.sigstore.json --trust xrun.pub --tsa-cert tsa.pem --artifact model.npy "
                "--policy policy.yaml --vsa-out model.vsa.intoto.jsonl --key auditor.key "
                "[--mlflow http://mlflow:5000 --register iris]",
                "keys:verify", [shared.trusted_keys("verify the signature with it"),
                                shared.key_files("the verification summary (--vsa-out, --register): the verifier's own"),
                                shared.json_flag(), shared.evidence()])
    p.add_argument("attestation", type=Path, help="provenance.intoto.jsonl, provenance.sigstore.json or a VSA")
    p.add_argument("--artifact", dest="artifacts", type=Path, action="append", default=[],
                   help="a file whose sha256 must be among the subjects (repeatable)")
    p.add_argument("--policy", type=Path, help="policy file (YAML or JSON; `xrun schema policy`)")
    p.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned attestation (SLSA L1)")

    p = command("reproduce", "re-run what an attestation records and compare the outputs (CI)",
                "xrun reproduce .xrun/runs/RUN/provenance.intoto.jsonl --trust xrun.pub --key xrun.key --rtol 1e-6",
                "reproduce:reproduce",
                [shared.attestation("verify the attestation before re-running"), shared.json_flag(),
                 shared.quiet_flag(), shared.runs_dir("where the new run directory goes (default: $XDG_STATE_HOME/xrun/runs, "
                                                      "~/.local/state/xrun/runs: never inside the code folder)"),
                 shared.hardware_mismatch(), shared.mlflow(), shared.verify_data(),
                 shared.key_files("the new run's attestation (default: $XRUN_SIGNING_KEY)")])
    p.add_argument("--manifest", type=Path, help="the manifest to re-run (its digest must match the recorded one)")
    p.add_argument("--signing-key", type=Path, metavar="KEY", help="the old spelling of --key KEY (still accepted)")
    p.add_argument("--rtol", type=float, help="relative tolerance for metrics files")
    p.add_argument("--atol", type=float, help="absolute tolerance for metrics files")
    p.add_argument("--tolerance", choices=["metrics"], help="accepted for clarity: tolerances apply to metrics only")

    command("rebuild", "rebuild the image an attestation records from its recorded inputs and compare the "
            "image ID (auditors)", "xrun rebuild .xrun/runs/RUN/provenance.intoto.jsonl --trust xrun.pub "
            "--code ./checkout\n\nexit 0 identical · 2 neither --trust nor --no-verify given · 3 different (what "
            "differs is named: base, package, wheel, code file, layer) or the attestation does not verify · 4 an input "
            "cannot be had", "build:rebuild",
            [shared.attestation("verify the attestation first"), shared.trust_alias(), shared.json_flag(),
             shared.quiet_flag()])


def _cluster_commands(command: Command) -> None:
    p = command("submit", "run the experiment through a cluster's scheduler (Slurm), render Kubernetes Jobs, or "
                "sweep seeds (one job array; one run and attestation per seed)",
                "xrun submit experiment.yaml --backend slurm --shared-dir /shared/xrun --seeds 1-10 --partition gpu",
                "cluster:submit", [shared.manifest(), shared.run_options()])
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
                "xrun node-run /shared/runs/20261129T171800Z-ab12cd", "node:node_run")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    for name, help_text, example, handler in (
        ("collect", "check a finished cluster run's (or every sweep member's) outputs and dependencies against the "
         "node's statement and sign it here; exit 3 when a statement is refused",
         "xrun collect 20261129T171800Z-ab12cd --key xrun.key   # a run, or a whole sweep", "cluster:collect"),
        ("wait", "wait until a cluster run's job (or every sweep member) ends, then collect it (sign with --key)",
         "xrun wait 20261129T171800Z-ab12cd --key xrun.key", "cluster:wait"),
        ("cancel", "cancel a cluster run's job, or every member of a sweep (scancel)",
         "xrun cancel 20261129T171800Z-ab12cd", "cluster:cancel"),
        ("logs", "print a cluster run's job log, or each sweep member's (-f: follow until the job ends)",
         "xrun logs latest -f", "cluster:logs"),
    ):
        signs = name in ("collect", "wait")
        q = command(name, help_text, example, handler,
                    [shared.runs_selection(), *((shared.signing_key(), shared.json_flag()) if signs else ())])
        q.add_argument("run", metavar="RUN|SWEEP", help="run id, sweep id (every member), id prefix, run directory "
                       "or 'latest'; an exact id wins over a prefix")
        if name == "logs":
            q.add_argument("-f", "--follow", action="store_true", help="follow the log until the job ends")


def _runs_commands(command: Command) -> None:
    runs = _group(command, "runs", "list, show and compare past runs", "xrun runs ls --manifest experiment.yaml",
                  "runs commands")
    for name, help_text, handler, nargs in (
        ("ls", "list runs (newest last)", "runs:ls", 0),
        ("show", "show one run (id, id prefix, path or 'latest')", "runs:show", 1),
        ("diff", "compare two runs side by side", "runs:diff", 2),
        ("summary", "per-metric mean, std, min, max and n across a seed sweep (SWEEP: its id), failed members "
                    "listed; example: xrun runs summary 20261129T1718Z-ab12cd --json", "cluster:summary", 1),
    ):
        q = runs.add_parser(name, help=help_text, description=help_text,
                            parents=[shared.runs_selection(), shared.json_flag()])
        q.set_defaults(handler=handler)
        if nargs:
            q.add_argument("run", nargs=nargs, metavar="RUN")

    q = runs.add_parser(
        "sync", help="send runs to MLflow that could not be logged when they ran (each exactly once)",
        description="send runs to MLflow: the given runs, or every run whose logging is pending (the server was "
                    "down); a run already logged is found by its xrun.runId tag and never sent twice; exit 4 when a run "
                    "could still not be sent (it stays pending)",
        epilog="example: xrun runs sync --manifest experiment.yaml --mlflow http://127.0.0.1:5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared.runs_selection(), shared.json_flag(),
                 shared.trusted_keys("tag each run xrun.verified by checking its attestation"), shared.trust_alias()])
    q.set_defaults(handler="runs:sync")
    q.add_argument("run", nargs="*", metavar="RUN", help="run ids, id prefixes, paths or 'latest' (default: pending)")
    q.add_argument("--mlflow", metavar="URI", help="the MLflow tracking URI (default: where each run was meant to "
                                                   "go, else $MLFLOW_TRACKING_URI)")

    p = command("report", "write one self-contained HTML page about runs: metrics plots, outputs, provenance",
                "xrun report --experiment mnist --trust xrun.pub --out report.html   (or --sweep SWEEP_ID, RUN…)",
                "report:report",
                [shared.runs_selection(), shared.json_flag(),
                 shared.trusted_keys("show each run's verification result"), shared.trust_alias()])
    p.add_argument("run", nargs="*", metavar="RUN|SWEEP", help="run ids, seed sweep ids (every member), id prefixes, "
                   "paths or 'latest'")
    p.add_argument("--sweep", action="append", default=[], metavar="SWEEP",
                   help="the members of a seed sweep, by its id as `xrun runs summary SWEEP` takes it (`xrun runs "
                        "ls` shows sweep ids; repeatable)")
    p.add_argument("--experiment", action="append", default=[], metavar="NAME",
                   help="every finished run of the experiment NAME (its manifest's name; repeatable)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file (default: report.html)")
