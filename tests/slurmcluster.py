"""A one-node Slurm cluster started as background daemons (no systemd), for tests/test_slurm.py.

`scripts/setup` installs `slurm-wlm` and `munge` with apt. The cluster gets its own config, state
and spool folders in a temporary folder and its own ports; clients find it through SLURM_CONF. The
node declares more CPUs and memory than this machine has (SlurmdParameters=config_overrides) so the
built-in hardware classes can be scheduled, and two fake GPUs (`gpu:fake:2`, character devices as
/dev/null is, named nvidia0 and nvidia1 so Slurm numbers them 0 and 1) so a GPU class becomes a real `--gres`
request and Slurm's SLURM_JOB_GPUS names the device it allocated. Stopped by PID at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from servers import PATIENCE_S

MUNGE_SOCKET_DIR = Path("/run/munge")
FAKE_GPUS = 2
DRAIN_S = 60  # how long teardown waits for the cancelled jobs to leave the queue


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster."""

    conf: Path  # slurm.conf (SLURM_CONF)
    root: Path
    node: str
    partition: str
    name: str
    pids: tuple[int, ...]

    def env(self) -> dict[str, str]:
        """The environment a client needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}


class SlurmUnavailable(Exception):
    """Slurm or munge is missing, or a daemon did not come up."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munged() -> int | None:
    """Start munged unless one already answers; its PID when we started it."""
    if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
        return None
    exe = shutil.which("munged") or "/usr/sbin/munged"
    if not os.path.exists(exe):
        raise SlurmUnavailable("munged is not installed (apt-get install munge; scripts/setup does it)")
    MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        keygen = shutil.which("mungekey") or "/usr/sbin/mungekey"
        subprocess.run(["runuser", "-u", "munge", "--", keygen], check=True)
    proc = subprocess.Popen(["runuser", "-u", "munge", "--", exe, "-F", "--force"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + PATIENCE_S
    while subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SlurmUnavailable("munged did not start")
        time.sleep(0.2)
    return proc.pid


def start_cluster(root: Path, name: str = "xrun-test", partition: str = "debug") -> SlurmCluster:
    """Write the config, start munged (when needed), slurmctld and slurmd, and wait for an idle node."""
    for tool in ("slurmctld", "slurmd", "sbatch", "sinfo"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SlurmUnavailable(f"{tool} is not installed (apt-get install slurm-wlm; scripts/setup does it)")
    node = socket.gethostname().split(".")[0]
    (root / "state").mkdir(parents=True, exist_ok=True)
    (root / "spool").mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName={name}
SlurmctldHost={node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=10
InactiveLimit=0
SchedulerParameters=sched_interval=2
NodeName={node} CPUs=8 RealMemory=65536 Gres=gpu:fake:{FAKE_GPUS} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    devices = root / "dev"
    devices.mkdir(exist_ok=True)
    for index in range(FAKE_GPUS):
        fake = devices / f"nvidia{index}"
        if not fake.exists():  # a character device as /dev/null is (1, 3): Slurm reads a GPU's device numbers
            os.mknod(fake, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "gres.conf").write_text(f"AutoDetect=off\nName=gpu Type=fake File={devices}/nvidia[0-{FAKE_GPUS - 1}]\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids: list[int] = []
    munged = _munged()
    if munged is not None:
        pids.append(munged)
    for daemon in ("slurmctld", "slurmd"):
        exe = shutil.which(daemon) or f"/usr/sbin/{daemon}"
        log = open(root / f"{daemon}.out", "wb")
        proc = subprocess.Popen([exe, "-D", "-f", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        pids.append(proc.pid)
        time.sleep(0.5)
    cluster = SlurmCluster(conf=conf, root=root, node=node, partition=partition, name=name, pids=tuple(pids))
    deadline = time.monotonic() + PATIENCE_S
    while True:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated"):
            return cluster
        if time.monotonic() > deadline:
            stop_cluster(cluster)
            logs = "".join((root / f).read_text(errors="replace")[-1500:] for f in ("slurmctld.log", "slurmd.log")
                           if (root / f).exists())
            raise SlurmUnavailable(f"the Slurm node did not become idle ({out.stdout.strip()} {out.stderr.strip()}): "
                                   f"{logs}")
        time.sleep(0.5)


def _drain(cluster: SlurmCluster) -> None:
    """Cancel what is left in the queue and wait until it is gone: a job step still ending when slurmd stops
    (a `docker run --rm` cleaning up) leaves its slurmstepd behind for good. Best effort: a job whose
    slurmstepd a test killed (the ghost task) never leaves, and the daemons are stopped after DRAIN_S anyway."""
    env = cluster.env()
    subprocess.run(["scancel", f"--partition={cluster.partition}"], env=env, capture_output=True)
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", f"--partition={cluster.partition}", "-o", "%i"], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0 or not out.stdout.strip():
            return
        time.sleep(0.2)


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel the jobs left, then stop the daemons we started, by PID (munged last)."""
    _drain(cluster)
    for pid in reversed(cluster.pids):
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            continue
    for pid in cluster.pids:
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
