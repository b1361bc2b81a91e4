"""The local backend: the container runs on this host's Docker engine (DOCKER_HOST honoured)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from runner.backends.interface import Backend, Execution
from runner.engine.execute import container_spec, run_container

if TYPE_CHECKING:
    from runner.context import RunContext
    from runner.fetch import FetchedData
    from runner.build.image import BuiltImage
    from runner.rundir import RunDir


class LocalBackend(Backend):
    """Run with the docker SDK on the engine the context is connected to."""

    name = "local"

    def execute(self, ctx: RunContext, run: RunDir, image: BuiltImage, fetched: Sequence[FetchedData],
                labels: dict[str, str]) -> Execution:
        """Create, run, stream logs and remove the container; the Execution says how it ended."""
        plan = ctx.plan
        spec = container_spec(
            image_id=image.id, command=plan.command, env=plan.env, workdir=plan.manifest.run.workdir,
            hardware=plan.hardware, host=ctx.host, data_mounts=[(f.host_path, f.container_path) for f in fetched],
            outputs_dir=run.outputs, timeout_s=plan.timeout_s, labels=labels, gpu_allocation=ctx.gpu_allocation,
        )
        result = run_container(ctx.client, spec, run.log, stream=not ctx.options.quiet, prefix=plan.manifest.name)
        return Execution(spec=spec, result=result)
