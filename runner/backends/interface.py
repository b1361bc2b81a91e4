"""The backend interface: the run stage of the pipeline, wherever the container runs.

A backend receives the resolved context, the built image and the verified data, runs the training
with xrun's isolation, and returns how it went; hashing, describing and signing stay with the
pipeline on the submitting side. `local` (this host's Docker engine) is the default.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from runner.errors import UsageError
from runner.engine.execute import ContainerSpec, RunResult

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.fetch import FetchedData
    from runner.build.image import BuiltImage
    from runner.rundir import RunDir


@dataclass(frozen=True)
class Execution:
    """What the run stage did: the container as specified, and how it ended."""

    spec: ContainerSpec
    result: RunResult


class Backend(abc.ABC):
    """Runs one planned container somewhere and reports how it ended."""

    name: ClassVar[str]

    @abc.abstractmethod
    def execute(self, ctx: RunContext, run: RunDir, image: BuiltImage, fetched: Sequence[FetchedData],
                labels: dict[str, str]) -> Execution:
        """Run the training for `run` and return its Execution (raises XrunError when it cannot start)."""


def get_backend(name: str) -> Backend:
    """The backend called `name`; a usage error listing the known ones otherwise."""
    from runner.backends.kubernetes import KubernetesBackend
    from runner.backends.local import LocalBackend
    from runner.backends.slurm import SlurmBackend

    known: dict[str, type[Backend]] = {b.name: b for b in (LocalBackend, SlurmBackend, KubernetesBackend)}
    if name not in known:
        raise UsageError(f"unknown backend {name!r}; known: {', '.join(sorted(known))}")
    return known[name]()
