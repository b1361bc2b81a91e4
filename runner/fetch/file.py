"""file:// URIs and plain paths (relative ones resolve against the manifest's folder)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from runner.fetch.interface import CHUNK, Fetcher, PermanentError, Source, Stream, TransientError


class FileStream(Stream):
    """A local file read in large chunks from an offset."""

    def __init__(self, source: Source, offset: int) -> None:
        assert source.path is not None
        try:
            self._file = open(source.path, "rb", buffering=0)
        except FileNotFoundError:
            raise PermanentError(f"no such file ({source.path})",
                                 "fix the path (a relative path is relative to the manifest's folder)") from None
        except IsADirectoryError:
            raise _folder_error(source) from None
        except PermissionError:
            raise PermanentError(f"permission denied reading {source.path}",
                                 "make the file readable by this user") from None
        except OSError as exc:
            raise _os_error(exc, source) from None
        try:
            st = os.fstat(self._file.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise _folder_error(source)
            self.total = st.st_size if stat.S_ISREG(st.st_mode) else None
            # A resume is only valid while the file is the one we started reading.
            self.validator = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
            self.offset = offset if self.total is not None and 0 < offset <= self.total else 0
            if self.offset:
                self._file.seek(self.offset)
        except BaseException:
            self._file.close()
            raise

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes from offset on."""
        read = self._file.read
        while True:
            try:
                chunk = read(CHUNK)
            except OSError as exc:
                raise TransientError(f"read error: {exc.strerror or exc}") from None
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class FileFetcher(Fetcher):
    """Reads local files; no connection state."""

    resumable = True

    def open(self, source: Source, *, offset: int = 0, validator: str | None = None) -> Stream:
        """Open the file at offset; a file that changed since `validator` is read from byte 0."""
        stream = FileStream(source, offset)
        if stream.offset and validator is not None and validator != stream.validator:
            stream.offset = 0
            stream._file.seek(0)
        return stream


def _folder_error(source: Source) -> PermanentError:
    return PermanentError(f"{source.path} is a folder, not a file",
                          "pack it as a .tar (or .tar.gz/.zip) and set unpack: true, or give one file")


def _os_error(exc: OSError, source: Source) -> Exception:
    if exc.errno in (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE):
        return TransientError(f"{exc.strerror or exc} reading {source.path}")
    return PermanentError(f"cannot read {source.path}: {exc.strerror or exc}", "check the path and its permissions")
