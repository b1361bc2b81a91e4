"""Every error a user can cause, each with its documented exit code."""

from __future__ import annotations

from runner.redact import redact, redact_lines

EXIT_OK = 0
EXIT_TRAINING = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_ENVIRONMENT = 4
EXIT_MISMATCH = 5
EXIT_INTERRUPTED = 130


class XrunError(Exception):
    """Base class: a one-line message for the user and an exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, lines: list[str] | None = None) -> None:
        # Every error reaches stderr, run.json or a tracker: a signed link's token or a URL's
        # password is redacted here, once, whoever raised it.
        message = redact(message)
        super().__init__(message)
        self.message = message
        # Extra lines printed after the message (e.g. one per manifest problem, a log tail).
        self.lines = redact_lines(list(lines or []))


class UsageError(XrunError):
    """Bad command-line usage or an unreadable input file."""

    exit_code = EXIT_USAGE


class ManifestError(XrunError):
    """The manifest (or a policy) is invalid; `lines` holds one line per problem."""

    exit_code = EXIT_USAGE


class IntegrityError(XrunError):
    """A checksum, signature or policy check failed."""

    exit_code = EXIT_INTEGRITY


class EnvironmentProblem(XrunError):
    """The host cannot do what is asked: no Docker engine, hardware mismatch, missing tool."""

    exit_code = EXIT_ENVIRONMENT


class FetchError(XrunError):
    """A data item or wheel could not be fetched (404, 403, retries exhausted)."""

    exit_code = EXIT_ENVIRONMENT


class BuildError(XrunError):
    """The image build failed; `lines` holds the build log tail."""

    exit_code = EXIT_TRAINING


class TrainingFailed(XrunError):
    """The training command failed, timed out, or did not produce its outputs."""

    exit_code = EXIT_TRAINING


class Interrupted(XrunError):
    """The user pressed Ctrl-C (or the process got SIGTERM)."""

    exit_code = EXIT_INTERRUPTED
