"""Read a file the user named (manifest, lockfile, key, policy, attestation) with one-line errors."""

from __future__ import annotations

from pathlib import Path

from runner.errors import UsageError, XrunError


def read_user_file(path: Path, what: str, *, max_bytes: int, hint: str = "",
                   error: type[XrunError] = UsageError) -> bytes:
    """The file's bytes; `error` naming the file and what to do when it is missing, a folder, huge or unreadable."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path}: {size} bytes is too large for a {what} (limit {max_bytes}); is this the right file?")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}{hint}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}{hint}") from None
    except PermissionError:
        raise error(f"{path}: permission denied reading the {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
