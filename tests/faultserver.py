"""A real threaded HTTP/1.1 server on 127.0.0.1 that injects faults on demand.

    with FaultServer() as server:
        server.add("/data.bin", payload)                      # ETag, Range and If-Range supported
        server.fault("/data.bin", Fault("close_after", after=1000))  # the next GET breaks after 1000 bytes
        server.fault("/data.bin", Fault("status", status=503, times=2, retry_after="0"))
        fetch(server.url("/data.bin"))
        assert server.count("/data.bin") == 4

Faults apply to the next `times` GETs of the path, in the order they were added:
  close_after (send `after` bytes, then close the connection), reset_after (send `after` bytes,
  then abort with a TCP RST; the client may lose what it had not read yet), status (answer `status`, with
  Retry-After, after `delay` seconds), ignore_range (200 with the whole body even to a Range request), wrong_length
  (Content-Length off by `delta`; the body is the real one), different_bytes (same length, other
  content), slow (pause `delay` seconds between `chunk`-byte writes), stall (send `after` bytes,
  then sleep `delay` seconds before the rest), ignore_if_range (honour Range even when If-Range
  names another version, like a careless cache), replace (serve `body` from now on, for good:
  the fault's own response still sends the old content, cut after `after` bytes when after > 0),
  endless (no Content-Length: the body, then zeros in `chunk`-byte writes until the client hangs up,
  or `after` bytes in all when after > 0, or 1 GiB: a hostile server, bounded so a test cannot hang).
POST is answered like GET (the request body is read and dropped), for Git LFS batch endpoints.
Files added with add_file() are served from disk with sendfile(2), for benchmarks.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    """One injected misbehaviour for the next `times` GETs of a path (times=-1: forever)."""

    kind: str
    times: int = 1
    after: int = 0
    status: int = 503
    retry_after: str | None = None
    delta: int = 0
    delay: float = 0.0
    chunk: int = 65536
    body: bytes | None = None


@dataclass(frozen=True)
class Request:
    """What the server saw, for assertions."""

    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int
    at: float


@dataclass
class _Resource:
    data: bytes | None = None
    file: Path | None = None
    size: int = 0
    etag: str = ""
    last_modified: str = ""
    ranges: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    redirect: str | None = None


@dataclass
class _State:
    resources: dict[str, _Resource] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        state: _State = self.server.state
        path = self.path.split("?", 1)[0]
        with state.lock:
            resource = state.resources.get(path)
            fault = _next_fault(state, path) if not head else None
        self._path = path
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            self._respond(resource, fault, head)
        finally:
            with state.lock:
                state.in_flight -= 1
        with state.lock:
            if fault is not None and fault.kind == "replace" and resource is not None and fault.body is not None:
                state.resources[path] = _make_resource(fault.body, ranges=resource.ranges)

    def _start(self, status: int) -> None:
        """Log the request (before any byte goes out, so a client never outruns the log), answer."""
        state: _State = self.server.state
        with state.lock:
            state.requests.append(Request(self.command, self._path, self.headers.get("Range"),
                                          self.headers.get("If-Range"), status, time.time()))
        if status == 404:
            self.send_error(404)
        else:
            self.send_response(status)

    def _respond(self, resource: _Resource | None, fault: Fault | None, head: bool) -> int:
        if fault is not None and fault.kind == "status":
            time.sleep(fault.delay)
            body = f"injected {fault.status}\n".encode()
            self._start(fault.status)
            if fault.retry_after is not None:
                self.send_header("Retry-After", fault.retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return fault.status
        if resource is None:
            self._start(404)
            return 404
        if resource.redirect is not None:
            self._start(302)
            self.send_header("Location", resource.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return 302
        start, end, status = 0, resource.size - 1, 200
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        honour = resource.ranges and not (fault is not None and fault.kind == "ignore_range")
        checks_validator = not (fault is not None and fault.kind == "ignore_if_range")
        if checks_validator and if_range is not None and if_range not in (resource.etag, resource.last_modified):
            honour = False  # the client's copy is of another version: send the whole new one
        if requested and honour:
            match = _RANGE.match(requested.strip())
            if match:
                first = int(match[1])
                last = int(match[2]) if match[2] else resource.size - 1
                if first >= resource.size:
                    self._start(416)
                    self.send_header("Content-Range", f"bytes */{resource.size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return 416
                start, end, status = first, min(last, resource.size - 1), 206
        length = end - start + 1
        declared = length + (fault.delta if fault is not None and fault.kind == "wrong_length" else 0)
        self._start(status)
        if fault is not None and fault.kind == "endless":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(declared))
        self.send_header("ETag", resource.etag)
        self.send_header("Last-Modified", resource.last_modified)
        if resource.ranges:
            self.send_header("Accept-Ranges", "bytes")
        for key, value in resource.headers.items():
            self.send_header(key, value)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{resource.size}")
        if fault is not None and fault.kind in ("close_after", "reset_after", "wrong_length", "replace"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            return status
        if resource.file is not None and fault is None:
            with open(resource.file, "rb") as f:
                self.connection.sendfile(f, start, length)
            return status
        body = _read(resource, start, length)
        if fault is not None and fault.kind == "different_bytes":
            body = fault.body[:length] if fault.body is not None else bytes(b ^ 0xFF for b in body)
        self._write_body(body, fault)
        return status

    def _write_body(self, body: bytes, fault: Fault | None) -> None:
        kind = fault.kind if fault is not None else None
        try:
            if kind == "close_after" or (kind == "replace" and fault.after > 0):
                self.wfile.write(body[: fault.after])
                self._close()
                return
            if kind == "reset_after":
                self.wfile.write(body[: fault.after])
                self._reset()
                return
            if kind == "stall":
                self.wfile.write(body[: fault.after])
                time.sleep(fault.delay)
                self.wfile.write(body[fault.after:])
                return
            if kind == "endless":
                self.wfile.write(body)
                block, sent, limit = bytes(fault.chunk), len(body), fault.after or (1 << 30)
                while sent < limit:
                    self.wfile.write(block[: limit - sent])
                    sent += min(len(block), limit - sent)
                self._close()
                return
            if kind == "slow":
                for i in range(0, len(body), fault.chunk):
                    self.wfile.write(body[i: i + fault.chunk])
                    time.sleep(fault.delay)
                return
            self.wfile.write(body)
            if kind == "wrong_length" and fault.delta > 0:
                self._close()  # the promised extra bytes never come
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _close(self) -> None:
        """Close the connection cleanly (FIN) before the promised length: the client sees a short body."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, like a crashed proxy."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _read(resource: _Resource, start: int, length: int) -> bytes:
    if resource.data is not None:
        return resource.data[start: start + length]
    assert resource.file is not None
    with open(resource.file, "rb") as f:
        f.seek(start)
        return f.read(length)


def _next_fault(state: _State, path: str) -> Fault | None:
    queue = state.faults.get(path) or []
    while queue:
        fault = queue[0]
        if fault.times == 0:
            queue.pop(0)
            continue
        if fault.times > 0:
            fault.times -= 1
            if fault.times == 0:
                queue.pop(0)
        return fault
    return None


def _make_resource(data: bytes, *, ranges: bool = True) -> _Resource:
    digest = hashlib.sha256(data).hexdigest()
    return _Resource(data=data, size=len(data), etag=f'"{digest[:32]}"',
                     last_modified=email.utils.formatdate(time.time(), usegmt=True), ranges=ranges)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # injected resets make the handler fail by design; keep test output clean


class FaultServer:
    """Start with `with FaultServer() as s:`; s.url(path) is the address of a resource."""

    def __init__(self) -> None:
        self.state = _State()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1."""
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        """http://127.0.0.1:PORT/path."""
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, data: bytes, *, ranges: bool = True, headers: dict[str, str] | None = None) -> str:
        """Serve `data` at `path` (Range support unless ranges=False, extra headers); returns the URL."""
        resource = _make_resource(data, ranges=ranges)
        resource.headers = dict(headers or {})
        with self.state.lock:
            self.state.resources[path] = resource
        return self.url(path)

    def redirect(self, path: str, target: str) -> str:
        """Answer GETs of `path` with 302 to `target` (a path or URL); returns the URL of path."""
        with self.state.lock:
            self.state.resources[path] = _Resource(redirect=target)
        return self.url(path)

    def add_file(self, path: str, file: Path) -> str:
        """Serve a file from disk at `path` with sendfile(2); returns the URL."""
        st = file.stat()
        with self.state.lock:
            self.state.resources[path] = _Resource(
                file=file, size=st.st_size, etag=f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"',
                last_modified=email.utils.formatdate(st.st_mtime, usegmt=True))
        return self.url(path)

    def fault(self, path: str, fault: Fault) -> None:
        """Queue a fault for the next GETs of path."""
        with self.state.lock:
            self.state.faults.setdefault(path, []).append(fault)

    def requests(self, path: str | None = None) -> list[Request]:
        """The requests seen so far (of one path, or all)."""
        with self.state.lock:
            return [r for r in self.state.requests if path is None or r.path == path]

    def count(self, path: str | None = None, method: str = "GET") -> int:
        """How many requests of that method reached path."""
        return sum(1 for r in self.requests(path) if r.method == method)

    @property
    def max_in_flight(self) -> int:
        """The most requests served at the same time so far."""
        with self.state.lock:
            return self.state.max_in_flight

    def start(self) -> "FaultServer":
        """Serve in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
