"""The Kubernetes backend: render the Jobs that run an experiment with xrun's guarantees.

`xrun submit M --backend kubernetes --render DIR` writes (templates/kubernetes.yaml), in apply order: a data
volume; one outputs volume per member (one for a single run, one per seed of a sweep: a ReadWriteOnce claim
is one pod's, and a pod template cannot name a different claim per index); a staging Job that fetches every
data item and checks its sha256 into the data volume; a NetworkPolicy denying every training pod all egress
and ingress; one training Job per member (image by digest, read-only root, non-root, no privilege escalation,
all capabilities dropped, seccomp RuntimeDefault, the class's CPU/memory/`nvidia.com/gpu`, a nodeSelector on
the GPU product label, activeDeadlineSeconds from run.timeout, backoffLimit 0, its seed in XRUN_SEED and
PYTHONHASHSEED), whose init container holds the training back until every pinned file is in the data volume
with its digest. A sweep's members are labelled xrun.dev/sweep (the run id, lower case) and xrun.dev/seed.
Submitting to an API server and signing from Kubernetes are not implemented (README says so).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from string import Template
from typing import Any

import yaml

from runner.backends.interface import Backend, Distribution, Handle, Prepared, SubmitOptions, SubmitResult
from runner.build.distribute import check_registry
from runner.errors import UsageError
from runner.resources import resource_dir
from runner.rundir import new_run_id, write_atomic

NOBODY = 65534
DEADLINE_MARGIN_S = 300
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA GPU feature discovery

# Runs in the staging container (the training image's python3): download, check sha256, rename.
STAGE_SCRIPT = r'''
import hashlib, json, os, sys, urllib.request
for item in json.loads(sys.argv[1]):
    dest = os.path.join("/data", item["path"])
    if os.path.exists(dest) and hashlib.sha256(open(dest, "rb").read()).hexdigest() == item["sha256"]:
        continue
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp, h = dest + ".partial", hashlib.sha256()
    with urllib.request.urlopen(item["uri"], timeout=60) as r, open(tmp, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            h.update(chunk); f.write(chunk)
    if h.hexdigest() != item["sha256"]:
        os.unlink(tmp); sys.exit(f"{item['name']}: sha256 {h.hexdigest()} is not the pinned {item['sha256']}")
    os.replace(tmp, dest)
'''

# Runs first in the training pod (an init container, no network): waits until every pinned file is in the data
# volume with its digest, so the training never starts before the staging Job (or a copy by hand) is done. The
# Job's activeDeadlineSeconds bounds the wait.
WAIT_SCRIPT = r'''
import hashlib, json, os, sys, time
items, last = json.loads(sys.argv[1]), None
while True:
    waiting = []
    for item in items:
        dest = os.path.join("/data", item["path"])
        h = hashlib.new(item["algorithm"])
        try:
            with open(dest, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            waiting.append(item["name"]); continue
        if h.hexdigest() != item["digest"]:
            waiting.append(item["name"])
    if not waiting:
        sys.exit(0)
    if waiting != last:
        print("waiting for staged data:", ", ".join(waiting), flush=True)
    last = waiting
    time.sleep(10)
'''


# The placeholders that differ between the members of a seed sweep: a template document that uses one (the outputs
# volume, the training Job) is written once per member, every other document (data volume, staging, policy) once.
MEMBER_KEYS = frozenset({"outputs_claim", "outputs_labels", "train_name", "train_labels", "env"})
# A Job's name becomes its pods' batch.kubernetes.io/job-name label, whose values are at most 63 characters.
MAX_JOB_NAME = 63
# libyaml where PyYAML has it: a 1,000-seed sweep is 2,000 documents to read back.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _dns_name(text: str, limit: int = 40) -> str:
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "xrun"


def _base_name(experiment: str, run_id: str, seeds: tuple[int, ...]) -> str:
    """xrun-<experiment>-<end of the run id>, the experiment cut short enough for every training Job's name."""
    suffix = max((len(f"-train-s{s}") for s in seeds), default=len("-train"))
    room = MAX_JOB_NAME - len("xrun-") - len("-") - 6 - suffix
    return f"xrun-{_dns_name(experiment, max(1, min(40, room)))}-{run_id.lower()[-6:]}"


def _member_values(plan: Any, name: str, labels: dict[str, str], run_id: str, seed: int | None) -> dict[str, Any]:
    """One member's placeholders: its outputs volume, its training Job, their labels, its seed's environment."""
    member = plan.with_seed(seed)  # the one way to make a sweep member's plan (XRUN_SEED, PYTHONHASHSEED)
    env = [{"name": k, "value": v} for k, v in member.env.items()] + [{"name": "HOME", "value": "/tmp"}]
    if seed is None:
        return {"outputs_claim": f"{name}-outputs", "outputs_labels": labels, "train_name": f"{name}-train",
                "train_labels": {**labels, "xrun.dev/role": "train"}, "env": env}
    # `kubectl get pvc -l xrun.dev/sweep=ID` lists the sweep's outputs volumes, xrun.dev/seed tells them apart.
    tags = {"xrun.dev/sweep": run_id.lower(), "xrun.dev/seed": str(seed)}
    return {"outputs_claim": f"{name}-outputs-s{seed}", "outputs_labels": {**labels, **tags},
            "train_name": f"{name}-train-s{seed}", "train_labels": {**labels, "xrun.dev/role": "train", **tags},
            "env": env}


def _placeholders(document: str) -> set[str]:
    return {m.group("named") or m.group("braced") for m in Template.pattern.finditer(document)} - {None}


def _fill(documents: list[str], shared: dict[str, Any], members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The template's documents filled in order, each member's document once per member."""
    objects = []
    for document in documents:
        keys = _placeholders(document)
        for member in members if keys & MEMBER_KEYS else [{}]:
            values = {**shared, **member}
            text = Template(document).substitute({k: json.dumps(values[k]) for k in keys})
            obj = yaml.load(text, Loader=_LOADER)
            if obj:
                objects.append(obj)
    return objects


def _with_role(objects: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["metadata"].get("labels", {}).get("xrun.dev/role") == role]


def render_objects(plan: Any, image_ref: str, seeds: tuple[int, ...], run_id: str) -> list[dict[str, Any]]:
    """The Kubernetes objects for the plan: data volume, outputs volumes, staging Job, policy, training Jobs."""
    hw = plan.hardware
    name = _base_name(plan.manifest.name, run_id, seeds)
    labels = {"app.kubernetes.io/managed-by": "xrun", "app.kubernetes.io/name": _dns_name(plan.manifest.name),
              "xrun.dev/run": run_id.lower()}
    pod_security = {"runAsNonRoot": True, "runAsUser": NOBODY, "runAsGroup": NOBODY, "fsGroup": NOBODY,
                    "seccompProfile": {"type": "RuntimeDefault"}}
    container_security = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "runAsNonRoot": True,
                          "privileged": False, "capabilities": {"drop": ["ALL"]},
                          "seccompProfile": {"type": "RuntimeDefault"}}
    limits: dict[str, Any] = {"cpu": str(hw.cpus), "memory": f"{hw.memory_gib}Gi"}
    if hw.gpus:
        limits["nvidia.com/gpu"] = str(hw.gpus)
    items = [{"name": d.item.name, "uri": d.item.uri, "path": d.item.path, "sha256": d.item.digests.get("sha256")}
             for d in plan.data]
    missing = [i["name"] for i in items if not i["sha256"] or not i["uri"].startswith(("http://", "https://"))]
    pinned = [{"name": d.item.name, "path": d.item.path, "algorithm": algo, "digest": d.item.digests[algo]}
              for d in plan.data for algo in [next((a for a in ("sha256", "sha512", "md5") if a in d.item.digests), None)]
              if algo and d.item.source is None]  # a dataset's digest is of a tree, not a file
    data_gib = max(1, math.ceil(sum(d.item.size or 0 for d in plan.data if getattr(d.item, "size", None)) / 2**30) + 1)
    shared = {
        "data_claim": f"{name}-data", "stage_name": f"{name}-stage", "policy_name": f"{name}-deny-egress",
        "labels": labels, "stage_labels": {**labels, "xrun.dev/role": "stage"},
        "train_selector": {**labels, "xrun.dev/role": "train"}, "image": image_ref,
        "pod_security": pod_security, "container_security": container_security,
        "stage_script": STAGE_SCRIPT, "stage_items": json.dumps([i for i in items if i["name"] not in missing]),
        "wait_script": WAIT_SCRIPT, "wait_items": json.dumps(pinned),
        "data_storage": f"{data_gib}Gi", "outputs_storage": "10Gi",
        "deadline": (plan.timeout_s or 24 * 3600) + DEADLINE_MARGIN_S,
        "node_selector": {GPU_PRODUCT_LABEL: hw.gpu_model} if hw.gpus and hw.gpu_model else {},
        "command": list(plan.command), "workdir": plan.manifest.run.workdir,
        "resources": {"requests": limits, "limits": limits},
    }
    members = [_member_values(plan, name, labels, run_id, seed) for seed in (seeds or (None,))]
    text = (resource_dir("templates") / "kubernetes.yaml").read_text(encoding="utf-8")
    objects = _fill(re.split(r"^---$", text, flags=re.MULTILINE), shared, members)
    for job in _with_role(objects, "train"):
        if not job["spec"]["template"]["spec"]["nodeSelector"]:
            del job["spec"]["template"]["spec"]["nodeSelector"]
    if missing:
        (stage,) = _with_role(objects, "stage")
        stage["metadata"]["annotations"] = {
            "xrun.dev/not-staged": ", ".join(missing) + ": not an http(s) URI with a sha256; copy it into the "
                                                        "data volume before the training Jobs start"}
    return objects


class KubernetesBackend(Backend):
    """Rendered Jobs (`--render DIR`); submitting through the Kubernetes API is not implemented yet."""

    name = "kubernetes"
    distribution = Distribution.REGISTRY

    def check(self, options: SubmitOptions) -> None:
        """--render and --registry are required: the manifests go to a folder, pods pull the image by digest."""
        if options.render is None:
            raise UsageError("--backend kubernetes needs --render DIR: xrun writes the manifests for `kubectl apply -f "
                             "DIR`; submitting through the Kubernetes API is not implemented yet")
        if not options.registry:
            raise UsageError("--backend kubernetes needs --registry HOST[:PORT]/REPO: pods pull the image by digest")
        check_registry(options.registry)

    def submit(self, prepared: Prepared) -> SubmitResult:
        """Render the objects for the pushed image into --render DIR."""
        ctx, image, options = prepared.ctx, prepared.image, prepared.options
        assert ctx is not None and image is not None and image.reference and options.render is not None
        run_id = new_run_id()
        objects = render_objects(ctx.plan, image.reference, options.seeds, run_id)
        out = options.render
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--render {out}: cannot create it ({exc.strerror})") from None
        written = []
        width = max(2, len(str(len(objects))))  # the files sort in apply order: 000… from 100 objects on
        for index, obj in enumerate(objects):
            path = out / f"{index:0{width}d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            write_atomic(path, yaml.safe_dump(obj, sort_keys=False).encode())
            written.append(path)
        return SubmitResult(backend=self.name, sweep=run_id if options.seeds else None, job_id=None,
                            image_id=image.id, image_reference=image.reference, script=None, runs=(),
                            rendered=tuple(written), seeds=options.seeds)

    def attach(self, run_dir: Path) -> Handle:
        """Rendered Jobs make no run directory xrun follows."""
        raise UsageError(f"{run_dir}: Kubernetes Jobs rendered by xrun are followed with kubectl "
                         "(`kubectl get jobs -l app.kubernetes.io/managed-by=xrun`)")
