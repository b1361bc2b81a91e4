"""Hardware classes and host matching."""

from runner import hardware
from runner.hardware import Gpu, Host


def test_catalog_has_the_documented_classes():
    names = set(hardware.catalog())
    assert {"cpu-1", "cpu-2", "cpu-8", "gpu-1x-any", "gpu-1x-a100-80gb", "gpu-1x-h100-80gb", "gpu-8x-h100-80gb"} <= names


def test_closest_class_names_the_likely_typo_or_nothing():
    assert hardware.closest_class("gpu-1xa100") == "gpu-1x-a100-80gb"
    assert hardware.closest_class("zzzzzzzz") is None


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


# --- GPUs as a scheduler allocates them (issue 21) -----------------------------------------------------------------

A100 = "NVIDIA A100-SXM4-80GB"
FOUR = tuple(Gpu(A100, f"GPU-{i}aaa", "550.54", 81920) for i in range(4))
NODE = Host(cpu_model="x", cpu_count=64, memory_bytes=512 * 2**30, gpus=FOUR)


def test_allocated_gpus_prefers_the_step_then_the_job_then_cuda_visible_devices():
    env = {"SLURM_STEP_GPUS": "2", "SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0"}
    assert hardware.allocated_gpus(env) == hardware.GpuAllocation(("2",), "SLURM_STEP_GPUS")
    del env["SLURM_STEP_GPUS"]
    assert hardware.allocated_gpus(env) == hardware.GpuAllocation(("2", "3"), "SLURM_JOB_GPUS")
    del env["SLURM_JOB_GPUS"]
    assert hardware.allocated_gpus(env) == hardware.GpuAllocation(("0",), "CUDA_VISIBLE_DEVICES")
    assert hardware.allocated_gpus({}) is None


def test_device_lists_in_every_spelling():
    assert hardware.parse_device_list("GPU-8e3f1c2a-aaaa-bbbb, MIG-GPU-8e3f/1/0") == ("GPU-8e3f1c2a-aaaa-bbbb",
                                                                                   "MIG-GPU-8e3f/1/0")
    assert hardware.parse_device_list("") == () and hardware.parse_device_list("-1") == ()
    assert hardware.parse_device_list("NoDevFiles") is None  # Slurm's word for a GRES without device files
    assert hardware.allocated_gpus({"SLURM_JOB_GPUS": "NoDevFiles", "CUDA_VISIBLE_DEVICES": "1"}).source \
        == "CUDA_VISIBLE_DEVICES"


def _spec(allocation, host=NODE, cls="gpu-1x-a100-80gb"):
    from pathlib import Path

    from runner.engine.execute import container_spec

    return container_spec(image_id="sha256:1", command=("true",), env={}, workdir="/workspace",
                          hardware=hardware.lookup(cls), host=host, data_mounts=[], outputs_dir=Path("/tmp/o"),
                          timeout_s=None, labels={}, gpu_allocation=allocation)


def test_two_one_gpu_jobs_on_one_node_get_different_devices():
    first = _spec(hardware.allocated_gpus({"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}))
    second = _spec(hardware.allocated_gpus({"SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0"}))
    assert (first.gpu_devices, second.gpu_devices) == (("0",), ("3",))
    assert second.isolation()["gpuDevices"] == ["3"]
    assert second.isolation()["gpuAllocation"] == {"devices": ["3"], "source": "SLURM_JOB_GPUS"}
    assert "gpuAllocation" not in _spec(None).isolation()  # outside a scheduler: a count, as before
    assert _spec(None).gpus == 1 and _spec(None).gpu_devices == ()


def test_a_uuid_allocation_and_a_cgroup_constrained_node():
    assert _spec(hardware.GpuAllocation(("GPU-2aaa",), "CUDA_VISIBLE_DEVICES")).gpu_devices == ("GPU-2aaa",)
    # ConstrainDevices=yes: nvidia-smi in the job sees only its GPU (as 0); Slurm's index is still the node's.
    constrained = Host(cpu_model="x", cpu_count=8, memory_bytes=64 * 2**30, gpus=FOUR[3:])
    allocation = hardware.GpuAllocation(("3",), "SLURM_JOB_GPUS")
    assert hardware.shortfalls(hardware.lookup("gpu-1x-a100-80gb"), constrained, allocation) == []
    assert _spec(allocation, host=constrained).gpu_devices == ("3",)


def test_an_allocation_smaller_than_the_class_is_a_shortfall():
    gaps = hardware.shortfalls(hardware.lookup("gpu-8x-h100-80gb"), NODE, hardware.GpuAllocation(("1",), "SLURM_JOB_GPUS"))
    assert any("allocated 1 (SLURM_JOB_GPUS=1" in g for g in gaps), gaps
    # Devices the allocation does not name are not this job's, though the node has them.
    assert hardware.shortfalls(hardware.lookup("gpu-1x-a100-80gb"), NODE, hardware.GpuAllocation(("7",), "x"))


def test_gres_names_the_class_or_the_clusters_gres():
    import pytest

    from runner.backends.slurm import gres
    from runner.errors import UsageError

    assert gres(hardware.lookup("gpu-1x-any"), {}) == "gpu:1"
    assert gres(hardware.lookup("gpu-8x-h100-80gb"), {}) == "gpu:h100:8"
    assert gres(hardware.lookup("gpu-8x-h100-80gb"), {"XRUN_SLURM_GPU_GRES": "gpu:h100_80g"}) == "gpu:h100_80g:8"
    assert gres(hardware.lookup("cpu-2"), {"XRUN_SLURM_GPU_GRES": "gpu"}) is None
    with pytest.raises(UsageError, match="XRUN_SLURM_GPU_GRES"):
        gres(hardware.lookup("gpu-1x-any"), {"XRUN_SLURM_GPU_GRES": "gpu:1 --wrap=x"})
