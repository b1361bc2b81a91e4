"""Checks that need a real NVIDIA GPU: host detection against the catalog, and seeded training on the GPU.

Skipped where there is no GPU (our CI machines have none). They run on a machine with `nvidia-smi` and
PyTorch built with CUDA, without Docker and without xrun's other dependencies, so they touch only the
modules that need none (runner.hardware) and the seed hook as it is copied into images
(templates/sitecustomize.py). Run there with `python3 -m pytest tests/test_gpu.py`, or, without
pytest, `python3 tests/test_gpu.py`.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    import pytest
except ImportError:  # the GPU machine may have no pytest: see __main__ below
    pytest = None  # type: ignore[assignment]


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _has_cuda_torch() -> bool:
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


if pytest is not None:
    pytestmark = pytest.mark.skipif(not _has_gpu(), reason="no NVIDIA GPU here (nvidia-smi)")


def _determinism_env() -> dict[str, str]:
    # The plan's DETERMINISM_ENV, read from the source: importing runner.plan needs jsonschema & co,
    # which the GPU machine does not have.
    tree = ast.parse((ROOT / "runner" / "plan.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "DETERMINISM_ENV" for t in targets):
                assert node.value is not None
                return dict(ast.literal_eval(node.value))
    raise AssertionError("runner/plan.py has no DETERMINISM_ENV")


def test_host_detection_fits_the_catalog_gpu_class() -> None:
    """The detected GPU satisfies the catalog class of its model and fails one of another model."""
    from runner.hardware import catalog, detect_host, shortfalls

    host = detect_host()
    assert host.gpus, "nvidia-smi answered but detect_host found no GPU"
    name = host.gpus[0].name.upper()
    mine = [c for c in catalog().values() if c.gpu_model and c.gpu_model.upper() in name and c.gpus <= len(host.gpus)]
    assert mine, f"no catalog class names this GPU: {name}"
    gpu_gaps = [s for c in mine for s in shortfalls(c, host) if "GPU" in s]
    assert not gpu_gaps, gpu_gaps
    other = [c for c in catalog().values() if c.gpu_model and c.gpu_model.upper() not in name]
    assert other and any("GPU" in s or "gpu" in s for s in shortfalls(other[0], host))


def test_a_slurm_allocation_selects_the_real_gpu_by_index_or_uuid() -> None:
    """SLURM_JOB_GPUS/CUDA_VISIBLE_DEVICES name the real device, by index or nvidia-smi's UUID; a missing one is refused."""
    from runner.errors import EnvironmentProblem
    from runner.hardware import allocated, allocated_gpus, catalog, check_host, detect_host

    host = detect_host()
    gpu = host.gpus[0]
    cls = next(c for c in catalog().values() if c.gpus == 1 and c.gpu_model and c.gpu_model.upper() in gpu.name.upper())
    for environ in ({"SLURM_JOB_GPUS": "0"}, {"CUDA_VISIBLE_DEVICES": gpu.uuid},
                    {"SLURM_STEP_GPUS": "0", "CUDA_VISIBLE_DEVICES": "GPU-not-this-one"}):
        allocation = allocated_gpus(environ)
        assert allocation is not None and allocated(host.gpus, allocation) == (gpu,), environ
        check_host(cls, host, allocation)
    absent = allocated_gpus({"CUDA_VISIBLE_DEVICES": "GPU-00000000-0000-0000-0000-000000000000"})
    assert allocated(host.gpus, absent) == ()
    try:
        check_host(cls, host, absent)
    except EnvironmentProblem as exc:
        assert "GPU" in exc.message
    else:
        raise AssertionError("a job allocated no real GPU was accepted for a GPU class")


TRAIN = r"""
import sitecustomize  # the hook as the image installs it; it must run before torch is imported
import hashlib, torch
assert torch.are_deterministic_algorithms_enabled(), "the seed hook did not turn on deterministic algorithms"
dev = torch.device("cuda")
x = torch.randn(4096, 64, device=dev)
y = (x @ torch.randn(64, 1, device=dev)).tanh()
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(200):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
h = hashlib.sha256()
for t in model.state_dict().values():
    h.update(t.detach().cpu().contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def _train(seed: int, tmp: Path) -> str:
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    shutil.copy(ROOT / "templates" / "sitecustomize.py", hook / "sitecustomize.py")
    env = dict(os.environ, PYTHONPATH=str(hook), XRUN_SEED=str(seed), PYTHONHASHSEED=str(seed),
               XRUN_APPLY_SEEDS="1", **_determinism_env())
    out = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_seeded_training_on_the_gpu_is_bit_identical(tmp_path: Path) -> None:
    """Two processes with the same seed give the same weights on CUDA; another seed does not."""
    if not _has_cuda_torch():
        if pytest is not None:
            pytest.skip("PyTorch with CUDA is not installed here")
        return
    first, second, other = _train(7, tmp_path), _train(7, tmp_path), _train(8, tmp_path)
    assert first == second, "same seed, different weights on the GPU"
    assert first != other, "another seed gave the same weights: the seed is not applied"
    print(f"seed 7: {first[:16]}… twice; seed 8: {other[:16]}…")


if __name__ == "__main__":
    import tempfile

    if not _has_gpu():
        sys.exit("no NVIDIA GPU here")
    test_host_detection_fits_the_catalog_gpu_class()
    print("PASS test_host_detection_fits_the_catalog_gpu_class")
    test_a_slurm_allocation_selects_the_real_gpu_by_index_or_uuid()
    print("PASS test_a_slurm_allocation_selects_the_real_gpu_by_index_or_uuid")
    with tempfile.TemporaryDirectory() as tmp:
        test_seeded_training_on_the_gpu_is_bit_identical(Path(tmp))
    print("PASS test_seeded_training_on_the_gpu_is_bit_identical")
    print("3 passed, 0 failed")
