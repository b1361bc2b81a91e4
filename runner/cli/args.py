"""Shared parent parsers: an option that several commands take is defined here, once.

Each function returns a fresh parent (`add_help=False`) for `add_parser(..., parents=[...])`; this
module imports of the library only the stderr messages (standard library underneath), so building the
whole parser stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.cli.messages import warn

DEFAULT_MANIFEST = Path("experiment.yaml")
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def json_flag() -> argparse.ArgumentParser:
    """--json: print the command's result as one JSON document (camelCase keys)."""
    p = _parent()
    p.add_argument("--json", action="store_true", help="print the result as JSON (camelCase keys)")
    return p


def quiet_flag() -> argparse.ArgumentParser:
    """--quiet/-q: no progress bars, build logs or streamed training logs."""
    p = _parent()
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, build logs or streamed logs")
    return p


def manifest(many: bool = False) -> argparse.ArgumentParser:
    """MANIFEST (or MANIFEST… with many): the experiment manifest positional argument."""
    p = _parent()
    p.add_argument("manifest", nargs="+" if many else None, metavar="MANIFEST", help="the experiment manifest (YAML)")
    return p


def runs_dir(help_text: str = "the runs directory (default: <manifest folder>/.xrun/runs)") -> argparse.ArgumentParser:
    """--runs-dir DIR."""
    p = _parent()
    p.add_argument("--runs-dir", type=Path, help=help_text)
    return p


def runs_selection() -> argparse.ArgumentParser:
    """--manifest and --runs-dir: which experiment's runs a `runs`/cluster command reads."""
    p = _parent()
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST,
                   help="the experiment whose runs to use (default: ./experiment.yaml)")
    p.add_argument("--runs-dir", type=Path, help="the runs directory (default: <manifest folder>/.xrun/runs)")
    return p


def signing_key() -> argparse.ArgumentParser:
    """--key KEY: the private key that signs (default $XRUN_SIGNING_KEY)."""
    p = _parent()
    p.add_argument("--key", type=Path, help="signing key (PEM; default: $XRUN_SIGNING_KEY; none: unsigned)")
    return p


def trusted_keys(use: str) -> argparse.ArgumentParser:
    """--trust PUB (repeatable): trusted public keys, for the given use."""
    p = _parent()
    p.add_argument("--trust", dest="trust", type=Path, action="append", default=[], metavar="PUB",
                   help=f"trusted public key: {use} (repeatable)")
    return p


class _TrustAlias(argparse.Action):
    """`--key PUB` where it once meant a trusted public key: still taken as --trust, with one line saying so."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: str | Sequence[Any] | None,
                 option_string: str | None = None) -> None:
        warn(public_key_as_trust(values))
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def public_key_as_trust(path: object) -> str:
    """The one line for a public key given where --key (the signing key) is meant."""
    return f"--key {path}: a trusted public key is given with --trust {path} (--key names the signing key); taken as --trust"


def key_files(signs: str) -> argparse.ArgumentParser:
    """--key KEY where a command both verifies and signs: a private key signs, a public one is taken as --trust."""
    p = _parent()
    p.add_argument("--key", dest="key_files", type=Path, action="append", default=[], metavar="KEY",
                   help=f"the private key that signs {signs}; a public key given here is taken as --trust, "
                        "with a warning")
    return p


def trust_alias() -> argparse.ArgumentParser:
    """--key PUB, the old spelling of --trust PUB in verify, rebuild, report and runs sync."""
    p = _parent()
    p.add_argument("--key", dest="trust", type=Path, action=_TrustAlias, default=argparse.SUPPRESS, metavar="PUB",
                   help="the old spelling of --trust PUB (still accepted, with a warning)")
    return p


def mlflow() -> argparse.ArgumentParser:
    """--mlflow URI: also log to an MLflow tracking server."""
    p = _parent()
    p.add_argument("--mlflow", metavar="URI", help="also log the run to this MLflow tracking server (default: "
                   "$MLFLOW_TRACKING_URI, else the manifest's tracking.mlflow.uri; needs `pip install 'xrun[mlflow]'`)")
    return p


def verify_data() -> argparse.ArgumentParser:
    """--verify-data: re-hash cached inputs instead of trusting their fingerprints."""
    p = _parent()
    p.add_argument("--verify-data", action="store_true",
                   help="re-hash every cached input (data, unpacked archives, wheels) before use instead of "
                        "trusting its fingerprint (auditors; CI: XRUN_VERIFY_DATA=1)")
    return p


def hardware_mismatch() -> argparse.ArgumentParser:
    """--allow-hardware-mismatch."""
    p = _parent()
    p.add_argument("--allow-hardware-mismatch", action="store_true",
                   help="run even if this host cannot satisfy the hardware class, and record that")
    return p


def tsa() -> argparse.ArgumentParser:
    """--tsa URL: an RFC 3161 timestamp over the attestation's signature (default $XRUN_TSA_URL)."""
    p = _parent()
    p.add_argument("--tsa", metavar="URL", help="get an RFC 3161 timestamp over the signature from this Time-Stamping "
                   "Authority, e.g. --tsa https://freetsa.org/tsr (default: $XRUN_TSA_URL; needs --key)")
    return p


def evidence() -> argparse.ArgumentParser:
    """verify's trusted time, signed summary (VSA) and registry gate options."""
    p = _parent()
    p.add_argument("--tsa-cert", dest="tsa_certs", type=Path, action="append", default=[], metavar="CHAIN.pem",
                   help="trust this Time-Stamping Authority: its PEM chain, TSA certificate first, root last "
                        "(repeatable)")
    p.add_argument("--trusted-root", type=Path, metavar="FILE",
                   help="trust the timestampAuthorities of a Sigstore trusted_root.json (what cosign reads)")
    p.add_argument("--vsa-out", type=Path, metavar="FILE",
                   help="also write a signed SLSA Verification Summary (VSA) of this verification to FILE")
    p.add_argument("--vsa-key", type=Path, metavar="KEY", help="the old spelling of --key KEY (still accepted)")
    p.add_argument("--mlflow", metavar="URI", help="the MLflow server whose Model Registry --register uses")
    p.add_argument("--register", metavar="NAME",
                   help="after a PASSED verification, register the --artifact files as a new version of model NAME "
                        "with the VSA and the attestation attached (needs --mlflow and --key)")
    return p


def run_options() -> argparse.ArgumentParser:
    """What `run` and `submit` share: output, signing key, runs dir, hardware, MLflow, data verification."""
    p = argparse.ArgumentParser(add_help=False, parents=[
        json_flag(), quiet_flag(), signing_key(),
        runs_dir("where run directories go (default: <manifest folder>/.xrun/runs)"),
        hardware_mismatch(), mlflow(), verify_data()])
    return p


def attestation(key_use: str) -> argparse.ArgumentParser:
    """ATTESTATION, --code DIR, --trust PUB and --no-verify: what `reproduce` and `rebuild` read."""
    p = argparse.ArgumentParser(add_help=False, parents=[trusted_keys(key_use)])
    p.add_argument("attestation", type=Path, help="provenance.intoto.jsonl or provenance.sigstore.json")
    p.add_argument("--code", type=Path, metavar="DIR",
                   help="the code folder, or the root of the repository the run was made from (the attestation "
                        "records where the manifest sits in it); checked against the recorded code digest; default: "
                        "the recorded run's folder, from run.json beside the attestation; e.g. --code .")
    p.add_argument("--no-verify", action="store_true",
                   help="use the attestation without verifying it (said and recorded as 'attestation NOT verified'); "
                        "without --trust or --no-verify nothing is done")
    return p


def age(text: str) -> float:
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
