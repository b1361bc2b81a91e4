"""Hardware classes (the built-in catalog), host detection, and matching a host to a class."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from runner.errors import EnvironmentProblem
from runner.resources import resource_dir


@dataclass(frozen=True)
class HardwareClass:
    """What a result is valid on: the container's limits and what the host must have."""

    name: str
    description: str
    cpus: int
    memory_gib: int
    gpus: int
    gpu_model: str | None
    gpu_memory_gib: int

    def to_json(self) -> dict[str, Any]:
        """Plain data for the plan and the attestation."""
        return asdict(self)


@dataclass(frozen=True)
class Gpu:
    name: str
    uuid: str
    driver_version: str
    memory_mib: int


@dataclass(frozen=True)
class Host:
    """What this machine has, as detected; recorded in run.json and the attestation."""

    cpu_model: str
    cpu_count: int
    memory_bytes: int
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    machine: str = ""
    kernel: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain data for run.json and the attestation's byproducts."""
        return asdict(self)


# Where a scheduler names the GPUs it gave this job, most specific first: a job step's own devices, then the
# job's. Slurm's two variables hold the node's device indices (gres.conf's order, the NVIDIA runtime's
# numbering, which the Docker engine outside the job's cgroup also uses). CUDA_VISIBLE_DEVICES comes last: on
# a node that constrains devices (cgroup.conf ConstrainDevices=yes) Slurm renumbers it 0..n-1 as the job sees
# them, which would point the engine at the wrong GPUs; it is what a host without Slurm sets by hand.
GPU_ALLOCATION_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
_DEVICE_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z/-]+")


@dataclass(frozen=True)
class GpuAllocation:
    """The GPUs a scheduler allocated to this job: device IDs the engine accepts (indices or UUIDs), and whence."""

    devices: tuple[str, ...]
    source: str  # the variable that named them (one of GPU_ALLOCATION_VARIABLES)

    def to_json(self) -> dict[str, Any]:
        """internalParameters.isolation.gpuAllocation."""
        return {"devices": list(self.devices), "source": self.source}


def allocated_gpus(environ: Mapping[str, str] = os.environ) -> GpuAllocation | None:
    """The GPUs this job was given, from the first variable of GPU_ALLOCATION_VARIABLES that lists devices."""
    for name in GPU_ALLOCATION_VARIABLES:
        devices = parse_device_list(environ.get(name))
        if devices is not None:
            return GpuAllocation(devices, name)
    return None


def parse_device_list(value: str | None) -> tuple[str, ...] | None:
    """'0,2' or 'GPU-uuid,…' → the IDs; None when it is no device list (unset, Slurm's 'NoDevFiles'); '' → none."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if items == ["-1"]:  # CUDA's "no device"
        return ()
    if not all(_DEVICE_ID.fullmatch(v) for v in items):
        return None
    return tuple(dict.fromkeys(items))


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, HardwareClass]:
    """The built-in hardware classes, by name."""
    data = json.loads((resource_dir("schemas") / "hardware-classes.json").read_text())
    return {name: HardwareClass(name=name, **spec) for name, spec in data["classes"].items()}


def closest_class(name: str) -> str | None:
    """The catalog's class name nearest to a mistyped `name` (None when none is close): the hint after a typo."""
    import difflib  # only after a typo: not on every run's path

    close = difflib.get_close_matches(name, list(catalog()), n=1, cutoff=0.5)
    return close[0] if close else None


def lookup(name: str) -> HardwareClass:
    """The class called `name`; callers validate the name first (see manifest validation)."""
    return catalog()[name]


def detect_host() -> Host:
    """Detect CPU model and count, memory, and NVIDIA GPUs (through nvidia-smi when present)."""
    return Host(
        cpu_model=_cpu_model(),
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        memory_bytes=_memory_bytes(),
        gpus=tuple(_nvidia_gpus()),
        machine=platform.machine(),
        kernel=platform.release(),
    )


def shortfalls(cls: HardwareClass, host: Host, allocation: GpuAllocation | None = None) -> list[str]:
    """What the host (or, in a scheduler's job, its allocation) lacks to satisfy the class; empty when it fits."""
    missing: list[str] = []
    if host.cpu_count < cls.cpus:
        missing.append(f"{cls.cpus} CPUs needed, {host.cpu_count} available")
    if host.memory_bytes and host.memory_bytes < cls.memory_gib * 2**30:
        missing.append(f"{cls.memory_gib} GiB memory needed, {host.memory_bytes / 2**30:.1f} GiB available")
    if cls.gpus and allocation is not None and len(allocation.devices) < cls.gpus:
        missing.append(f"{cls.gpus} GPU(s) needed, the job was allocated {len(allocation.devices)} "
                       f"({allocation.source}={','.join(allocation.devices) or 'none'}; ask the scheduler for more)")
    elif cls.gpus:
        gpus = allocated(host.gpus, allocation)
        fitting = [g for g in gpus if _gpu_fits(cls, g)]
        if len(fitting) < cls.gpus:
            want = f"{cls.gpus} GPU(s)" + (f" of model {cls.gpu_model}" if cls.gpu_model else "")
            if cls.gpu_memory_gib:
                want += f" with ≥{cls.gpu_memory_gib} GiB"
            have = ", ".join(g.name for g in host.gpus) or "no NVIDIA GPU (nvidia-smi found none)"
            missing.append(f"{want} needed, host has {have}")
    return missing


def allocated(gpus: tuple[Gpu, ...], allocation: GpuAllocation | None) -> tuple[Gpu, ...]:
    """The host's GPUs this job may use: all without an allocation, else those it names (by index or UUID)."""
    if allocation is None:
        return gpus
    indices = [int(d) for d in allocation.devices if d.isdigit()]
    if len(gpus) == len(allocation.devices) and any(i >= len(gpus) for i in indices):
        return gpus  # a job whose node constrains devices (cgroup) sees only its own GPUs, renumbered from 0
    return tuple(g for i, g in enumerate(gpus) if str(i) in allocation.devices or g.uuid in allocation.devices)


def check_host(cls: HardwareClass, host: Host, allocation: GpuAllocation | None = None) -> None:
    """Raise exit 4 naming what is missing when the host cannot satisfy the class."""
    missing = shortfalls(cls, host, allocation)
    if missing:
        raise EnvironmentProblem(
            f"hardware class {cls.name!r} does not fit this host: {'; '.join(missing)} "
            "(pick a smaller class, or pass --allow-hardware-mismatch to run anyway and record it)"
        )


def _gpu_fits(cls: HardwareClass, gpu: Gpu) -> bool:
    if cls.gpu_model and cls.gpu_model.lower() not in gpu.name.lower():
        return False
    return gpu.memory_mib >= cls.gpu_memory_gib * 1024 * 0.97


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _nvidia_gpus() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,uuid,driver_version,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv,noheader`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        mem = parts[3].split()[0] if parts[3] else "0"
        gpus.append(Gpu(name=parts[0], uuid=parts[1], driver_version=parts[2],
                        memory_mib=int(mem) if mem.isdigit() else 0))
    return gpus
