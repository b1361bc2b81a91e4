"""The labels xrun puts on its containers, and the runner identity that ties a container to its xrun process.

Every container xrun creates carries `org.xrun.runner` = `host:pid:start` naming the xrun process that
created it (its start time in clock ticks makes a reused pid a different runner).
"""

from __future__ import annotations

import os
import socket

RUNNER_LABEL = "org.xrun.runner"
MANAGED_LABEL = "org.xrun.managed"  # a training container
PROBE_LABEL = "org.xrun.probe"  # a throwaway container that reads something out of an image
RUN_ID_LABEL = "org.xrun.run-id"
NAME_LABEL = "org.xrun.name"


def runner_identity(pid: int | None = None) -> str:
    """'host:pid:start' of this (or the given local) process."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def is_gone(identity: str) -> bool:
    """True when identity names a process of this host that no longer runs (other hosts: unknown, False)."""
    host, _, rest = identity.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return _start_ticks(int(pid_text)) != start


def _start_ticks(pid: int) -> str:
    """The process's start time since boot (/proc/PID/stat field 22); '' when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""
