"""Connect to the Docker engine (DOCKER_HOST honoured, so podman's socket works too)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

from runner.engine.labels import PROBE_LABEL, RUNNER_LABEL, runner_identity
from runner.errors import EnvironmentProblem
from runner.interrupts import deferred

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
API_TIMEOUT_S = 120  # builds and loads stream for long; the SDK's default of 60 s cuts them off
# How long a clean-up keeps asking a busy engine to remove a container before it hands the removal on
# (to the watchdog) and says so: a bound on patience, not an expected duration.
REMOVAL_PATIENCE_S = 300.0


def docker_client(environ: Mapping[str, str] = os.environ, *, timeout: int = API_TIMEOUT_S) -> Any:
    """A connected docker.DockerClient; EnvironmentProblem (exit 4) with how to start one when none answers."""
    import docker
    import docker.errors

    where = environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    try:
        client = docker.DockerClient.from_env(environment=dict(environ), timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(_explain(where, exc)) from None
    except Exception as exc:  # noqa: BLE001 - requests/urllib3 errors surface raw on some SDK paths
        raise EnvironmentProblem(_explain(where, exc)) from None
    return client


def remove_confirmed(client: Any, container_id: str, *, patience_s: float = REMOVAL_PATIENCE_S,
                     sleep: Any = time.sleep) -> bool:
    """Force-remove a container and wait until the engine confirms it is gone; False if not within patience_s.

    A busy engine answers late, times out, or fails a removal half-way (409 "removal in progress", a
    500 from the storage driver): each is asked again, with backoff, until the engine says NotFound."""
    import docker.errors

    give_up = time.monotonic() + patience_s
    delay = 0.2
    while True:
        try:
            client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            return True
        except Exception:  # noqa: BLE001 - busy or half-way: ask again below
            pass
        try:
            client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return True
        except Exception:  # noqa: BLE001 - no answer is no confirmation
            pass
        if time.monotonic() >= give_up:
            return False
        sleep(delay)
        delay = min(delay * 2, 5.0)


def _explain(where: str, exc: BaseException) -> str:
    text = str(exc)
    if "Permission denied" in text or "PermissionError" in text:
        return (f"cannot talk to the Docker engine at {where}: permission denied; add your user to the `docker` "
                "group (sudo usermod -aG docker $USER, then log in again) or run with sudo")
    if "No such file" in text or "FileNotFoundError" in text or "Connection refused" in text or "Connection aborted" \
            in text:
        return (f"no Docker engine answers at {where}; start it (sudo systemctl start docker, or open Docker "
                "Desktop), or point DOCKER_HOST at a running engine (podman: unix:///run/user/$UID/podman/podman.sock)")
    return (f"cannot reach the Docker engine at {where}: {text.splitlines()[0] if text else type(exc).__name__}; "
            "check that it runs (docker info) or set DOCKER_HOST")


class ProbeFailed(EnvironmentProblem):
    """A probe command failed in an image; `missing` when the executable is not in the image at all."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def run_offline(client: Any, image: str, argv: list[str], *, timeout_s: int = 120) -> str:
    """Run argv in a throwaway container of `image` with the network off; its stdout, or EnvironmentProblem."""
    import docker.errors
    import requests

    container = None
    try:
        with deferred():  # a create interrupted half-way would leave a container we hold no id of
            container = client.containers.create(image, command=argv[1:], entrypoint=[argv[0]],
                                                 network_mode="none", user="0:0", detach=True,
                                                 labels={PROBE_LABEL: "true", RUNNER_LABEL: runner_identity()})
        container.start()
        status = container.wait(timeout=timeout_s)
        out = container.logs(stdout=True, stderr=False).decode("utf-8", "replace")
        if int(status.get("StatusCode", 1)) != 0:
            err = container.logs(stdout=False, stderr=True).decode("utf-8", "replace").strip().splitlines()
            raise ProbeFailed(f"`{argv[0]}` failed in image {image} (exit {status.get('StatusCode')}): "
                              f"{err[-1] if err else 'no output'}")
        return out
    except docker.errors.APIError as exc:
        text = str(exc.explanation or exc)
        missing = "executable file not found" in text or "no such file or directory" in text.lower()
        raise ProbeFailed(f"cannot run `{argv[0]}` in image {image}: {text}", missing=missing) from None
    except requests.exceptions.RequestException as exc:
        raise EnvironmentProblem(f"`{argv[0]}` in image {image} did not finish within {timeout_s}s: {exc}") from None
    finally:
        if container is not None:
            remove_confirmed(client, container.id)


def cached_probe(cache: Any, image_id: str, kind: str, compute: Any) -> Any:
    """compute() once per image ID and kind, kept as JSON under <cache>/images/ (an image never changes)."""
    hexdigest = image_id.split(":", 1)[-1]
    path = cache.root / "images" / hexdigest[:2] / f"{hexdigest}.{kind}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["value"]
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"imageId": image_id, "kind": kind, "value": value}, f, sort_keys=True)
    os.replace(tmp, path)
    return value
