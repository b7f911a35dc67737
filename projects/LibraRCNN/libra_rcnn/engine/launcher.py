"""Processes that a cluster launcher started: torchrun (PyTorch's elastic agent) and SLURM's srun.

Detectron2's ``launch`` starts the processes of one machine itself. Under ``torchrun`` or
``srun`` they are started already, one per GPU (or per CPU worker), with their rank, the world
size and the master's address in the environment. :func:`detect` reads them;
:func:`init_process_group` then sets up what Detectron2's ``launch`` would have: the global
process group, Detectron2's per-machine group (``comm.create_local_process_group``) and the
CUDA device of the local rank. ``train_net.py`` and ``lazy_train_net.py`` do this by themselves
(:func:`libra_rcnn.engine.launch_checked`), and such a process resumes from the last complete
checkpoint of its ``OUTPUT_DIR`` (an elastic restart, a requeued or resubmitted job) without
``--resume``. Under SLURM, :class:`RequeueOnSignal` turns the job's warning signal (``sbatch
--signal``) and its preemption (``SIGTERM``) into a checkpoint and a requeue. docs/distributed.md.
"""
import datetime
import functools
import logging
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping, Optional
from urllib.parse import urlparse

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "LaunchError",
    "LaunchedProcess",
    "detect",
    "wait_for_master",
    "init_process_group",
    "RequeueOnSignal",
    "requeue_hook",
    "check_cpus",
]

logger = logging.getLogger("libra_rcnn")
# Seconds a process other than the master waits for the master's address (``--connect-timeout``).
CONNECT_TIMEOUT = 300.0


class LaunchError(ValueError):
    """A launcher environment that cannot be used, naming the variable or address."""


@dataclass(frozen=True)
class LaunchedProcess:
    """This process's place among the launched ones.

    Attributes:
        launcher: ``"torchrun"`` or ``"slurm"``.
        rank, world_size: global rank and number of processes.
        local_rank, local_world_size: rank and number of processes on this machine.
        master_addr, master_port: where rank 0 serves the process group's store.
        restarts: how many times the processes were started again before (torchrun's elastic
            restarts, or SLURM's requeues).
        job: torchrun's run id, or the SLURM job id.
        agent_store: torchrun's agent serves the store at the master's address for every
            round of the rendezvous (``TORCHELASTIC_USE_AGENT_STORE``, PyTorch's default).
    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    restarts: int
    job: str
    agent_store: bool = False


def _int(env: Mapping[str, str], name: str, launcher: str) -> int:
    value = env.get(name)
    if value is None:
        raise LaunchError(f"{launcher}: the environment variable {name} is not set")
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{launcher}: {name} = {value!r} is not an integer") from None


def _tasks_per_node(value: str, name: str) -> int:
    """The one number of tasks per node in SLURM's ``2(x3)`` / ``2`` / ``2,2`` notation."""
    counts = set()
    for part in value.split(","):
        m = re.fullmatch(r"(\d+)(\(x\d+\))?", part.strip())
        if not m:
            raise LaunchError(f"slurm: {name} = {value!r} is not SLURM's tasks-per-node notation")
        counts.add(int(m.group(1)))
    if len(counts) != 1:
        raise LaunchError(f"slurm: {name} = {value!r}: Detectron2 needs the same number of tasks on every node")
    return counts.pop()


@functools.lru_cache(maxsize=None)
def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``scontrol show hostnames``, or ``host[1-3]`` parsed)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    m = re.match(r"([^,\[]+)(\[(\d+)[^\]]*\])?", nodelist)
    if not m:
        raise LaunchError(f"slurm: cannot read the first host of the node list {nodelist!r}")
    return m.group(1) + (m.group(3) or "")


def detect(env: Optional[Mapping[str, str]] = None) -> Optional[LaunchedProcess]:
    """The launcher that started this process, or None (started by hand: Detectron2's launch).

    - torchrun: ``TORCHELASTIC_RUN_ID`` set; ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
      ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``.
    - SLURM: a task of a job step (``srun``): ``SLURM_STEP_ID`` and ``SLURM_PROCID`` set;
      ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_STEP_TASKS_PER_NODE`` (or
      ``SLURM_TASKS_PER_NODE``), ``SLURM_STEP_NODELIST`` (or ``SLURM_JOB_NODELIST``),
      ``SLURM_JOB_ID``; ``MASTER_ADDR`` / ``MASTER_PORT`` when given, else the first node and
      a port derived from the job id; ``SLURM_RESTART_COUNT`` after a requeue.

    Raises:
        LaunchError: naming the variable that is missing or unreadable.
    """
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_RUN_ID"):
        name = "torchrun"
        return LaunchedProcess(
            launcher=name, rank=_int(env, "RANK", name), world_size=_int(env, "WORLD_SIZE", name),
            local_rank=_int(env, "LOCAL_RANK", name), local_world_size=_int(env, "LOCAL_WORLD_SIZE", name),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1", master_port=_int(env, "MASTER_PORT", name),
            restarts=int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0), job=env["TORCHELASTIC_RUN_ID"],
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
        )  # fmt: skip
    if env.get("SLURM_STEP_ID") is not None and env.get("SLURM_PROCID") is not None:
        name = "slurm"
        job = str(_int(env, "SLURM_JOB_ID", name))
        per_node_name = "SLURM_STEP_TASKS_PER_NODE" if "SLURM_STEP_TASKS_PER_NODE" in env else "SLURM_TASKS_PER_NODE"
        if per_node_name not in env:
            raise LaunchError("slurm: the environment variable SLURM_STEP_TASKS_PER_NODE is not set")
        nodes_name = "SLURM_STEP_NODELIST" if "SLURM_STEP_NODELIST" in env else "SLURM_JOB_NODELIST"
        if nodes_name not in env and "MASTER_ADDR" not in env:
            raise LaunchError("slurm: the environment variable SLURM_JOB_NODELIST is not set")
        return LaunchedProcess(
            launcher=name, rank=_int(env, "SLURM_PROCID", name), world_size=_int(env, "SLURM_NTASKS", name),
            local_rank=_int(env, "SLURM_LOCALID", name),
            local_world_size=_tasks_per_node(env[per_node_name], per_node_name),
            master_addr=env.get("MASTER_ADDR") or _first_host(env[nodes_name]),
            master_port=int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else 20000 + int(job) % 20000,
            restarts=int(env.get("SLURM_RESTART_COUNT", "0") or 0), job=job,
        )  # fmt: skip
    return None


def wait_for_master(address: str, timeout: float, what: str) -> None:
    """Wait until ``address`` (``host:port`` or ``tcp://host:port``) accepts a TCP connection.

    A process other than the master calls this before it joins the process group, so that a
    master nobody runs, or a wrong address, fails within ``timeout`` seconds in one line rather
    than after PyTorch's 30 minutes with its C++ log. Only a connection is opened and closed.

    Raises:
        LaunchError: naming ``what`` (the flag or variables that gave the address) and the wait.
    """
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme != "tcp" or not parsed.hostname or not parsed.port:
        raise LaunchError(f"{what} = {address!r} is not tcp://HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=min(5.0, max(timeout, 0.1))):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"nobody answered at {parsed.hostname}:{parsed.port} ({what}) within {timeout:g} s: "
                    "start the master (rank 0) first, or check the address"
                ) from None
            time.sleep(0.5)


def _round_store(proc: LaunchedProcess, connect_timeout: float, timeout: datetime.timedelta) -> dist.Store:
    """A store for this round of torchrun's rendezvous only, served by rank 0.

    torchrun's agent keeps one store for all rounds (``TORCHELASTIC_USE_AGENT_STORE``), and its
    workers' keys are not separated by round: after an elastic restart, gloo and NCCL read the
    addresses that the previous round's processes left there and fail to connect (PyTorch
    issue 135712; ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in torchrun's environment avoids it
    too). So rank 0 serves a new store on a free port and announces it in the agent's store; a
    stale announcement names a store whose process has ended (torchrun stops every worker before
    a new round), so the others take the address once it accepts a connection.

    Raises:
        LaunchError: no live announcement within ``connect_timeout`` seconds.
    """
    agent = dist.TCPStore(proc.master_addr, proc.master_port, is_master=False,
                          timeout=datetime.timedelta(seconds=connect_timeout))  # fmt: skip
    key = f"libra_rcnn/{proc.job}/round_store"
    if proc.rank == 0:
        store = dist.TCPStore(proc.master_addr, 0, proc.world_size, is_master=True, timeout=timeout,
                              wait_for_workers=False)  # fmt: skip
        agent.set(key, f"{proc.master_addr}:{store.port}")
        return store
    deadline = time.monotonic() + connect_timeout
    while True:
        address = agent.get(key).decode()
        try:
            wait_for_master(address, 0.0, "rank 0's store for this round")
            break
        except LaunchError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    host, port = address.rsplit(":", 1)
    return dist.TCPStore(host, int(port), proc.world_size, is_master=False, timeout=timeout)


def init_process_group(
    proc: LaunchedProcess,
    connect_timeout: float = CONNECT_TIMEOUT,
    timeout: datetime.timedelta = datetime.timedelta(minutes=30),
) -> None:
    """What Detectron2's ``launch`` does in each process it starts, for one started by ``proc.launcher``:
    the process group (NCCL with CUDA, else gloo), Detectron2's per-machine group and the device.

    Under SLURM, a rank other than 0 first waits up to ``connect_timeout`` seconds for the
    master's address (:func:`wait_for_master`), then joins through ``tcp://``; under torchrun
    the group's store is the round's own (:func:`_round_store`), or the one the agent's
    ``MASTER_ADDR:MASTER_PORT`` names when the agent does not keep its store across rounds.

    Raises:
        LaunchError: the master's address did not answer in time.
    """
    has_gpu = torch.cuda.is_available()
    group = dict(backend="NCCL" if has_gpu else "GLOO", world_size=proc.world_size, rank=proc.rank, timeout=timeout)
    if proc.launcher == "slurm":
        if proc.rank != 0:
            wait_for_master(f"{proc.master_addr}:{proc.master_port}", connect_timeout,
                            "MASTER_ADDR:MASTER_PORT, from SLURM's node list and job id unless set")  # fmt: skip
        dist.init_process_group(init_method=f"tcp://{proc.master_addr}:{proc.master_port}", **group)
    elif proc.agent_store:
        dist.init_process_group(store=_round_store(proc, connect_timeout, timeout), **group)
    else:
        dist.init_process_group(init_method="env://", **group)
    comm.create_local_process_group(proc.local_world_size)
    if has_gpu:
        torch.cuda.set_device(proc.local_rank)
    comm.synchronize()


class RequeueOnSignal(HookBase):
    """On SLURM's warning signal or its preemption, a checkpoint of the iteration just finished,
    then a requeue.

    - ``SIGUSR1``: ``sbatch --signal=USR1@SECONDS`` sends it to every task some time before the
      job's time limit (scripts/slurm_train.sbatch asks for it).
    - ``SIGTERM``: SLURM preempts a job by sending it to every task, then ``SIGKILL`` once the
      partition's ``GraceTime`` has passed; ``scancel`` sends it too. A job whose tasks exit
      after it is COMPLETED and is not requeued by SLURM, even under ``PreemptMode=REQUEUE``, so
      the job requeues itself, as after the warning signal.

    The handler only notes the signal; after each iteration the processes agree whether any of
    them got one (Detectron2's ``comm.all_gather``, over gloo: no CUDA synchronisation), and if
    so every process stops after the same iteration: the checkpointer writes
    ``model_{iter:07d}.pth`` (atomically, then ``last_checkpoint``), the log says how many
    seconds that took (it must fit in ``GraceTime``), and rank 0 runs ``scontrol requeue JOB``,
    unless the job is cancelled (``scancel`` without ``--signal`` also begins with ``SIGTERM``).
    The requeued job starts ``train_net.py`` again and resumes from that checkpoint
    (:func:`libra_rcnn.engine.resume_under_launcher`), at the same data position
    (:mod:`libra_rcnn.engine.position`).

    Args:
        checkpointer: the trainer's ``DetectionCheckpointer``.
        job: the SLURM job id to requeue.
        signals: the signals that stop the job (``SIGUSR1`` and ``SIGTERM``).
    """

    def __init__(self, checkpointer, job: str, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.checkpointer = checkpointer
        self.job = job
        self.signals = tuple(signals)
        self._received: Optional[int] = None
        # Installed at once: the default action of both signals ends the process.
        for signum in self.signals:
            signal.signal(signum, self._note)

    def _note(self, signum, frame) -> None:
        if self._received is None:
            self._received = signum

    def after_step(self) -> None:
        received = [s for s in comm.all_gather(self._received) if s is not None]
        if not received:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        start = time.monotonic()
        self.checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        if comm.is_main_process():
            what = signal.Signals(received[0]).name
            logger.info("%s at iteration %d: wrote %s.pth in %.1f s", what, iteration, name, time.monotonic() - start)
            state = _job_state(self.job)
            if state == "CANCELLED":  # scancel: the user ended the job, SIGTERM was its first step
                logger.info("SLURM job %s is cancelled: not requeued", self.job)
            else:
                logger.info("requeueing SLURM job %s (state %s)", self.job, state)
                done = subprocess.run(["scontrol", "requeue", self.job], capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    logger.error("scontrol requeue %s failed: %s", self.job, done.stderr.strip())
        comm.synchronize()
        raise SystemExit(0)


def _job_state(job: str) -> str:
    """SLURM's ``JobState`` of ``job`` (``scontrol show job``), or ``"unknown"``."""
    try:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else "unknown"


def check_cpus(num_workers: int, key: str, env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Under SLURM, a warning (logged and returned) when a task starts more processes (itself and
    ``num_workers`` data-loader workers) than the CPUs given to it (``SLURM_CPUS_PER_TASK``),
    naming ``key`` (the config key of the workers); else None."""
    env = os.environ if env is None else env
    cpus = env.get("SLURM_CPUS_PER_TASK")
    if env.get("SLURM_JOB_ID") is None or not (cpus or "").isdigit() or num_workers + 1 <= int(cpus):
        return None
    message = (f"{key} = {num_workers}: each task runs {num_workers + 1} processes on SLURM_CPUS_PER_TASK = {cpus} "
               f"CPUs; give it sbatch --cpus-per-task {num_workers + 1}, or set {key} {int(cpus) - 1} "
               "(the batches do not depend on the number of workers)")
    logger.warning(message)
    return message


def requeue_hook(checkpointer) -> Optional[RequeueOnSignal]:
    """:class:`RequeueOnSignal` for a process that srun started, else None."""
    proc = detect()
    return RequeueOnSignal(checkpointer, proc.job) if proc is not None and proc.launcher == "slurm" else None
