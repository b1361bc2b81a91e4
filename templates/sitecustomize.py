"""xrun's seed hook, run by every Python interpreter in the image before user code.

Seeds `random` at once and numpy, torch, TensorFlow and JAX when (and only if) they are first
imported, so an interpreter that never imports them pays nothing. Disabled by XRUN_APPLY_SEEDS=0.
"""

import importlib.abc
import importlib.util
import os
import sys

_SEED = os.environ.get("XRUN_SEED")


def _seed_numpy(module, seed):
    module.random.seed(seed)


def _seed_torch(module, seed):
    module.manual_seed(seed)
    if hasattr(module, "cuda"):
        module.cuda.manual_seed_all(seed)
    module.use_deterministic_algorithms(True)
    backends = getattr(module, "backends", None)
    if backends is not None:
        backends.cudnn.deterministic = True
        backends.cudnn.benchmark = False
        backends.cuda.matmul.allow_tf32 = False
        backends.cudnn.allow_tf32 = False


def _seed_tensorflow(module, seed):
    module.random.set_seed(seed)
    config = getattr(module, "config", None)
    if config is not None and hasattr(config.experimental, "enable_op_determinism"):
        config.experimental.enable_op_determinism()


def _seed_jax(module, seed):
    # JAX has no global RNG: programs pass keys. XLA_FLAGS (set by xrun) makes GPU ops deterministic.
    return None


_HOOKS = {"numpy": _seed_numpy, "torch": _seed_torch, "tensorflow": _seed_tensorflow, "jax": _seed_jax}


class _SeedingLoader(importlib.abc.Loader):
    def __init__(self, loader, hook, seed):
        self._loader, self._hook, self._seed = loader, hook, seed

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            self._hook(module, self._seed)
        except Exception as exc:  # never break the user's import because seeding failed
            print(f"xrun: could not seed {module.__name__}: {exc}", file=sys.stderr)


class _SeedingFinder(importlib.abc.MetaPathFinder):
    def __init__(self, seed):
        self._seed = seed
        self._done = set()

    def find_spec(self, name, path=None, target=None):
        hook = _HOOKS.get(name)
        if hook is None or name in self._done:
            return None
        self._done.add(name)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _SeedingLoader(spec.loader, hook, self._seed)
        return spec


def _install():
    if _SEED is None or os.environ.get("XRUN_APPLY_SEEDS", "1") == "0":
        return
    seed = int(_SEED)
    import random

    random.seed(seed)
    sys.meta_path.insert(0, _SeedingFinder(seed))


_install()
