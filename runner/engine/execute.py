"""Run the training container: no network, read-only root, no capabilities, limits, logs, clean-up."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Iterator

from runner.engine.client import REMOVAL_PATIENCE_S, remove_confirmed
from runner.engine.labels import MANAGED_LABEL, RUN_ID_LABEL
from runner.errors import Interrupted, TrainingFailed
from runner.hardware import GpuAllocation, HardwareClass, Host, allocated
from runner.interrupts import deferred
from runner.hashing import sha256_file
from runner.rundir import utc_now
from runner.runs.record import ContainerStatus

NOBODY = "65534:65534"
PIDS_LIMIT = 4096
TMPFS_SIZE = "2g"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """Everything decided about the container before it starts; recorded as internalParameters."""

    image: str
    command: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    user: str
    mounts: tuple[Mount, ...]
    nano_cpus: int
    mem_limit_bytes: int
    pids_limit: int
    gpus: int
    timeout_s: int | None
    labels: dict[str, str] = field(default_factory=dict)
    gpu_devices: tuple[str, ...] = ()  # the engine's device IDs, when a scheduler allocated them (else a count)
    gpu_allocation: GpuAllocation | None = None

    def isolation(self) -> dict[str, Any]:
        """The isolation and limits applied, as plain data for the attestation."""
        return {
            "network": "none", "readOnlyRootfs": True, "capDrop": ["ALL"], "noNewPrivileges": True,
            "user": self.user, "tmpfs": {"/tmp": TMPFS_SIZE}, "pidsLimit": self.pids_limit,
            "nanoCpus": self.nano_cpus, "memoryBytes": self.mem_limit_bytes, "gpus": self.gpus,
            "mounts": [{"container": m.container, "readOnly": m.read_only} for m in self.mounts],
            "workdir": self.workdir, "timeoutSeconds": self.timeout_s,
            # Only where a scheduler allocated GPUs: which devices the container got, and who said so.
            **({"gpuDevices": list(self.gpu_devices), "gpuAllocation": self.gpu_allocation.to_json()}
               if self.gpu_allocation is not None else {}),
        }


@dataclass(frozen=True)
class RunResult:
    """How the container ended."""

    status: ContainerStatus
    exit_code: int | None
    started_on: datetime
    finished_on: datetime
    log_sha256: str
    log_tail: tuple[str, ...]
    oom_killed: bool = False  # the kernel killed it at the memory limit (Docker's State.OOMKilled)
    memory_bytes: int = 0  # the limit it ran under
    # What the engine had not confirmed removed, for the watchdog: container ids, or `label=value` when
    # the engine did not even list the run's containers.
    left_behind: tuple[str, ...] = ()


@dataclass(frozen=True)
class Execution:
    """What the run stage did: the container as specified, and how it ended."""

    spec: ContainerSpec
    result: RunResult


def container_user(uid: int | None = None, gid: int | None = None) -> str:
    """The invoking user's uid:gid, or nobody when xrun itself runs as root (the run is never root)."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    return NOBODY if uid == 0 else f"{uid}:{gid}"


def container_spec(*, image_id: str, command: tuple[str, ...], env: dict[str, str], workdir: str,
                   hardware: HardwareClass, host: Host, data_mounts: list[tuple[Path, str]],
                   outputs_dir: Path, timeout_s: int | None, labels: dict[str, str],
                   gpu_allocation: GpuAllocation | None = None) -> ContainerSpec:
    """Turn the plan's run section and the class's limits into a container spec."""
    # Docker refuses more CPUs than the host has; with --allow-hardware-mismatch we clamp and record.
    cpus = max(1, min(hardware.cpus, host.cpu_count))
    # Likewise the engine refuses GPUs the host lacks: the run gets the ones there are (recorded as gpus).
    gpus = min(hardware.gpus, len(allocated(host.gpus, gpu_allocation)))
    # In a scheduler's job the container gets the allocated devices by ID, never "the first N" of the node:
    # two 1-GPU jobs on one node would otherwise both get GPU 0.
    devices = gpu_allocation.devices[:gpus] if gpu_allocation is not None else ()
    mounts = [Mount(str(host_path), container_path, True) for host_path, container_path in data_mounts]
    mounts.append(Mount(str(outputs_dir), "/outputs", False))
    return ContainerSpec(
        image=image_id, command=command, env={**env, "HOME": "/tmp"}, workdir=workdir,
        user=container_user(), mounts=tuple(mounts), nano_cpus=cpus * 10**9,
        mem_limit_bytes=hardware.memory_gib * 2**30, pids_limit=PIDS_LIMIT, gpus=gpus,
        timeout_s=timeout_s, labels={MANAGED_LABEL: "true", **labels}, gpu_devices=devices,
        gpu_allocation=gpu_allocation,
    )


def create_arguments(spec: ContainerSpec) -> dict[str, Any]:
    """The docker SDK's containers.create() arguments for the spec (its isolation, limits and GPU devices)."""
    import docker.types

    kwargs: dict[str, Any] = dict(
        image=spec.image, command=list(spec.command), environment=spec.env, working_dir=spec.workdir,
        user=spec.user, network_mode="none", read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], tmpfs={"/tmp": f"rw,nosuid,nodev,size={TMPFS_SIZE}"},
        mounts=[docker.types.Mount(m.container, m.host, type="bind", read_only=m.read_only) for m in spec.mounts],
        nano_cpus=spec.nano_cpus, mem_limit=spec.mem_limit_bytes, memswap_limit=spec.mem_limit_bytes,
        pids_limit=spec.pids_limit, labels=spec.labels, hostname="xrun", detach=True,
    )
    if spec.gpu_devices:
        kwargs["device_requests"] = [docker.types.DeviceRequest(device_ids=list(spec.gpu_devices),
                                                                capabilities=[["gpu"]])]
    elif spec.gpus:
        kwargs["device_requests"] = [docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
    return kwargs


def run_container(client: Any, spec: ContainerSpec, log_path: Path, *, stream: bool, prefix: str) -> RunResult:
    """Create, start, stream logs, wait (with the timeout), and always remove the container."""
    import requests

    uid, _, gid = spec.user.partition(":")
    outputs = next(m.host for m in spec.mounts if m.container == "/outputs")
    if os.getuid() == 0 and spec.user == NOBODY:
        os.chown(outputs, int(uid), int(gid))
    kwargs = create_arguments(spec)
    container = None
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    started = utc_now()
    status, code, oom = ContainerStatus.FAILED, None, False
    try:
        with deferred():  # a create interrupted half-way would leave a container we hold no id of
            container = client.containers.create(**kwargs)
        log = open(log_path, "wb")
        # The pump owns the log file and closes it: the main thread never closes it under the pump.
        pump = threading.Thread(target=_pump_logs, args=(container, log, tail, stream, prefix), daemon=True)
        try:
            container.start()
        except BaseException:
            log.close()
            raise
        pump.start()
        try:
            result = container.wait(timeout=spec.timeout_s) if spec.timeout_s else container.wait()
            code = int(result.get("StatusCode", -1))
            status = ContainerStatus.SUCCEEDED if code == 0 else ContainerStatus.FAILED
            oom = code != 0 and _oom_killed(container)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            status = ContainerStatus.TIMED_OUT
            _stop(container)
        except KeyboardInterrupt:
            status = ContainerStatus.INTERRUPTED
            _stop(container)
        pump.join(timeout=10)
    finally:
        # Interrupted between the engine creating the container and the SDK handing it back: find it by
        # the run's label, so that it cannot outlive the run.
        left = (_remove_all(client, [container.id]) if container is not None
                else _remove_labelled(client, spec.labels))
        if os.getuid() == 0 and spec.user == NOBODY:
            _chown_tree(Path(outputs), 0, 0)
    finished = utc_now()
    result = RunResult(status=status, exit_code=code, started_on=started, finished_on=finished,
                       log_sha256=sha256_file(log_path), log_tail=tuple(tail), oom_killed=oom,
                       memory_bytes=spec.mem_limit_bytes, left_behind=left)
    return result


def raise_for_status(result: RunResult, timeout_s: int | None) -> None:
    """Turn a failed, timed-out or interrupted run into the matching XrunError."""
    removed = ("removed" if not result.left_behind else
               f"handed to the watchdog for removal (the engine had not confirmed it after {REMOVAL_PATIENCE_S:g}s)")
    if result.status == ContainerStatus.INTERRUPTED:
        raise Interrupted(f"interrupted: the container was stopped and {removed}; no attestation was written")
    if result.status == ContainerStatus.TIMED_OUT:
        raise TrainingFailed(f"timed out after {timeout_s}s (run.timeout): the container was stopped and {removed}; "
                             "raise run.timeout or make the job faster", lines=list(result.log_tail))
    if result.status != ContainerStatus.SUCCEEDED and result.oom_killed:
        raise TrainingFailed(f"the training ran out of memory: it was killed at the hardware class's memory limit "
                             f"({result.memory_bytes / 2**30:g} GiB, exit code {result.exit_code}); choose a "
                             "class with more memory (hardware.class) or make the job use less; last log lines:",
                             lines=list(result.log_tail))
    if result.status != ContainerStatus.SUCCEEDED:
        raise TrainingFailed(failure_message(result.exit_code, bool(result.log_tail)), lines=list(result.log_tail))


def failure_message(exit_code: int | None, has_log: bool) -> str:
    """Why the training container ended: its exit code, or the signal that killed it and who may have sent it."""
    tail = "; last log lines:" if has_log else "; it wrote nothing to its log"
    signal_no = exit_code - 128 if exit_code is not None and 128 < exit_code < 160 else None
    if signal_no == 9:
        # Not the engine's OOM kill at the class's limit (handled above): someone or something outside.
        return ("the training container was killed (SIGKILL, exit code 137) from outside xrun: not at the "
                "class's memory limit, so by `docker kill`/`docker rm -f`, the host's OOM killer or the "
                "scheduler (scancel --signal=KILL, a node's memory enforcement)" + tail)
    if signal_no is not None:
        name = _signal_name(signal_no)
        return (f"the training container was killed by {name} (exit code {exit_code}): a signal sent from outside "
                "xrun (`docker stop`/`docker kill`) or raised by the command itself" + tail)
    return f"the training command exited with code {exit_code}" + tail


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _pump_logs(container: Any, log: IO[bytes], tail: deque[str], stream: bool, prefix: str) -> None:
    colour = stream and sys.stderr.isatty()
    head = f"\x1b[36m[{prefix}]\x1b[0m " if colour else f"[{prefix}] "
    pending = b""
    try:
        for chunk in container.logs(stream=True, follow=True):
            log.write(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _emit(line, tail, stream, head)
        if pending:
            _emit(pending, tail, stream, head)
    except Exception:  # noqa: BLE001 - the container vanished mid-stream (timeout/interrupt): keep the log so far
        pass
    finally:
        log.close()


def _oom_killed(container: Any) -> bool:
    """Whether the engine says the kernel's OOM killer ended the container."""
    try:
        container.reload()
    except Exception:  # noqa: BLE001 - gone already: no way to tell
        return False
    return bool((container.attrs.get("State") or {}).get("OOMKilled"))


def _emit(line: bytes, tail: deque[str], stream: bool, head: str) -> None:
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    tail.append(text)
    if stream:
        print(head + text, file=sys.stderr, flush=True)


def _stop(container: Any) -> None:
    try:
        container.kill()
    except Exception:  # already gone
        pass


def _remove_all(client: Any, ids: list[str]) -> tuple[str, ...]:
    """Remove the run's containers, waiting for the engine to confirm each; the ones it did not confirm."""
    return tuple(i for i in ids if not remove_confirmed(client, i))


def _remove_labelled(client: Any, labels: dict[str, str]) -> tuple[str, ...]:
    """Remove the run's containers found by its run label; the label itself when the engine did not list them."""
    run_id = labels.get(RUN_ID_LABEL)
    if not run_id:
        return ()
    for attempt in range(3):
        try:
            return _remove_all(client, [c.id for c in managed_containers(client, run_id)])
        except Exception:  # noqa: BLE001 - no answer yet: ask again, then hand the label on
            if attempt < 2:
                time.sleep(1.0)  # a busy engine: give it a moment (the watchdog pauses too), kept short: we are exiting
    return (f"{RUN_ID_LABEL}={run_id}",)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    # Iterative: the training may leave a 10,000-deep tree (os.walk recursed until RecursionError);
    # past PATH_MAX a folder cannot be listed and is skipped (collect_outputs refuses such a tree).
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
        except OSError:
            continue
        for entry in found:
            try:
                os.lchown(entry.path, uid, gid)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
            except OSError:
                pass
    os.chown(root, uid, gid)


def managed_containers(client: Any, run_id: str | None = None) -> Iterator[Any]:
    """Containers xrun created that still exist (of one run when run_id is given; none after any run)."""
    label = f"{RUN_ID_LABEL}={run_id}" if run_id else f"{MANAGED_LABEL}=true"
    yield from client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
