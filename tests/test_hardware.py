"""Hardware classes and host matching."""

from runner import hardware
from runner.hardware import Gpu, Host


def test_catalog_has_the_documented_classes():
    names = set(hardware.catalog())
    assert {"cpu-1", "cpu-2", "cpu-8", "gpu-1x-any", "gpu-1x-a100-80gb", "gpu-1x-h100-80gb", "gpu-8x-h100-80gb"} <= names


def test_detect_host_reads_proc():
    host = hardware.detect_host()
    assert host.cpu_count >= 1 and host.memory_bytes > 0 and host.cpu_model


def test_shortfalls():
    host = Host(cpu_model="x", cpu_count=2, memory_bytes=24 * 2**30)
    assert hardware.shortfalls(hardware.lookup("cpu-2"), host) == []
    assert "8 CPUs needed" in hardware.shortfalls(hardware.lookup("cpu-8"), host)[0]
    assert "GPU" in " ".join(hardware.shortfalls(hardware.lookup("gpu-1x-any"), host))
    h100 = Host(cpu_model="x", cpu_count=16, memory_bytes=128 * 2**30,
                gpus=(Gpu("NVIDIA H100 80GB HBM3", "GPU-1", "550.54", 81559),))
    assert hardware.shortfalls(hardware.lookup("gpu-1x-h100-80gb"), h100) == []
    assert hardware.shortfalls(hardware.lookup("gpu-1x-a100-80gb"), h100)


def test_parse_nvidia_smi():
    out = "NVIDIA H100 80GB HBM3, GPU-abc, 550.54.15, 81559 MiB\n"
    (gpu,) = hardware.parse_nvidia_smi(out)
    assert gpu.name.startswith("NVIDIA H100") and gpu.memory_mib == 81559 and gpu.driver_version == "550.54.15"
