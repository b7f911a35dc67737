"""SLURM for real: a one-node cluster (munged, slurmctld, slurmd from Debian's slurm-wlm and munge,
scripts/setup_slurm.sh installs them) started in a temporary folder on loopback, a 2-task job of
scripts/slurm_train.sbatch, warned mid-run as at its time limit (SIGUSR1) or preempted (SIGTERM),
requeued and resumed, ending bit-identical to the same training never stopped."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import LOOPBACK, checkpoints, free_port, last_checkpoint, starts, stop_group, wait_for
from conftest import REPO, TWO_PROCESS_TRAINING, assert_same_weights

DAEMONS = ("munged", "slurmctld", "slurmd")


def _require_slurm():
    missing = [d for d in DAEMONS if not (shutil.which(d) or os.path.exists(f"/usr/sbin/{d}"))]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed: run scripts/setup_slurm.sh (as root)"
    if os.environ.get("CI"):
        pytest.fail(message + " (.ci/run does; the SLURM tests must not skip in CI)")
    pytest.skip(message)


def _conf(folder: Path, host: str) -> str:
    return f"""ClusterName=libra-test
SlurmctldHost={host}({LOOPBACK})
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr={LOOPBACK} CPUs={os.cpu_count()} State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60
PartitionName=high Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running one-node SLURM; yields the environment for its client commands. Its own munge
    key and socket, its own ports, all state in a temporary folder; every daemon stopped by id."""
    _require_slurm()
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    (folder / "slurm.conf").write_text(_conf(folder, host))
    env = dict(os.environ, SLURM_CONF=str(folder / "slurm.conf"))
    daemons = []
    try:
        munged = [
            "munged", "--force", "--foreground", f"--socket={folder}/munge.socket", f"--key-file={key}",
            f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed",
        ]  # fmt: skip
        for command in (munged, ["slurmctld", "-D", "-f", env["SLURM_CONF"]], ["slurmd", "-D", "-f", env["SLURM_CONF"]]):
            log = open(folder / f"{command[0]}.out", "w")
            daemons.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if command[0] == "munged":
                wait_for(lambda: (folder / "munge.socket").exists(), 30, "munged's socket", alive=daemons)

        def idle():
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30)
            return out.stdout.strip() == "idle"

        wait_for(idle, 60, "the node to be idle", alive=daemons)
        yield env
    finally:
        for partition in ("debug", "high"):
            subprocess.run(["scancel", "--full", "--quiet", "--partition", partition], env=env, capture_output=True,
                           timeout=30)  # fmt: skip
        for daemon in reversed(daemons):
            stop_group(daemon)


def _job(env, job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S+)", out.stdout))


@pytest.mark.parametrize("stop", ["USR1", "TERM", "preempted"])
def test_sbatch_two_tasks_checkpoint_requeue_and_resume_exactly(stop, slurm, tmp_path, tiny_scenes, never_stopped):
    """USR1: the time-limit warning (``sbatch --signal``), sent with ``scancel --signal``. TERM:
    what SLURM sends at a preemption, sent the same way (SLURM requeues nothing itself).
    preempted: a job of the higher-priority partition ``high`` takes the node; SLURM sends TERM
    and gives the job the partition's GraceTime (60 s) before it kills it."""
    signal_name = "USR1" if stop == "USR1" else "TERM"
    out = tmp_path / "out"
    log = tmp_path / "job.log"
    env = dict(slurm, DETECTRON2_DATASETS=str(tiny_scenes), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PYTHON=sys.executable, MASTER_ADDR=LOOPBACK, MASTER_PORT=str(free_port()),
               GLOO_SOCKET_IFNAME="lo")  # fmt: skip
    submit = subprocess.run(
        ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={log}",
         str(REPO / "scripts/slurm_train.sbatch"), *TWO_PROCESS_TRAINING, "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
    wait_for(lambda: checkpoints(out) or _job(slurm, job).get("JobState") in ended, 300, "the first checkpoint")
    assert checkpoints(out), (_job(slurm, job), log.read_text()[-3000:] if log.exists() else "")
    if stop == "preempted":  # both CPUs, at a higher priority tier
        preemptor = subprocess.run(["sbatch", "--parsable", "-p", "high", "-n", str(os.cpu_count()),
                                    f"--output={tmp_path / 'preemptor.log'}", "--wrap", "sleep 2"],
                                   env=slurm, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert preemptor.returncode == 0, preemptor.stderr
    else:  # the signal, now, to every task of the job's steps
        subprocess.run(["scancel", f"--signal={signal_name}", job], env=slurm, check=True, timeout=30)
    wait_for(lambda: _job(slurm, job).get("Restarts") == "1", 120, "the job to requeue itself")
    stopped = re.search(rf"SIG{signal_name} at iteration (\d+): wrote \S+ in ([\d.]+) s", log.read_text())
    warned_at, seconds = int(stopped.group(1)), float(stopped.group(2))
    assert last_checkpoint(out) == f"model_{warned_at:07d}.pth"
    # Slurm holds a requeued job back for about 2 minutes (BeginTime, set once the requeue is
    # done: the job passes through REQUEUED and CANCELLED first); start it sooner, but not within
    # the second of the requeue: slurmd revokes the job's credential at the requeue with a
    # resolution of one second, and kills a run whose credential is as old ("Job credential
    # revoked", the job FAILED). Started again until its second run has begun.
    wait_for(lambda: _job(slurm, job).get("JobState") == "PENDING", 60, "the requeued job to be pending")
    pending_since = time.monotonic()
    second_run = f"job {job} run 2"

    def started():
        if second_run in log.read_text():
            return True
        if time.monotonic() - pending_since > 3 and _job(slurm, job).get("JobState") == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm, timeout=30)
        return False

    wait_for(started, 180, "the requeued job to start", interval=2)
    wait_for(lambda: _job(slurm, job).get("JobState") in ended, 400, "the requeued job to finish")
    info = _job(slurm, job)
    text = log.read_text()
    if info["JobState"] != "COMPLETED" or info["Restarts"] != "1":
        daemons = Path(slurm["SLURM_CONF"]).parent
        pytest.fail(
            f"job {job}: {info}\n--- job log ---\n{text}\n--- slurmctld.log (end) ---\n"
            f"{(daemons / 'slurmctld.log').read_text()[-4000:]}",
            pytrace=False,
        )
    assert f"job {job} run 1" in text and f"job {job} run 2" in text
    assert f"slurm (job {job}, restart 1): resuming from model_{warned_at:07d}.pth" in text
    assert starts((out / "log.txt").read_text()) == [0, warned_at + 1]
    assert last_checkpoint(out) == "model_final.pth"
    tensors = assert_same_weights(never_stopped, out)
    print(text)
    print(f"job {job} ({stop}): SIG{signal_name} at iteration {warned_at}, checkpoint written in {seconds} s, resumed at "
          f"{warned_at + 1}; {info['JobState']}, Restarts={info['Restarts']}; checkpoints {checkpoints(out)}; "
          f"model_final.pth equal to the run never stopped ({tensors} tensors)")  # fmt: skip
