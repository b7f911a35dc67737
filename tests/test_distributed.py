"""Launchers: torchrun (two elastic agents on loopback, a killed worker, a job restarted by hand)
and bad launcher input (libra_rcnn.engine.launcher, docs/distributed.md). SLURM: tests/test_slurm.py."""
import os
import re
import signal
import subprocess
import sys

import pytest

from cluster import LOOPBACK, checkpoints, children, free_port, last_checkpoint, starts, stop_group, wait_for
from conftest import CONFIG, REPO, TINY_CLI, TWO_PROCESS_TRAINING, assert_same_weights, train_net_env
from test_lazy_config import RCNN_1X, small_overrides
from libra_rcnn.engine.launcher import LaunchError, check_cpus, detect, wait_for_master

TORCHRUN_ENV = {
    "TORCHELASTIC_RUN_ID": "job1", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
    "MASTER_ADDR": LOOPBACK, "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "2",
}  # fmt: skip
SLURM_ENV = {
    "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_STEP_NODELIST": "node[07-08]", "SLURM_JOB_ID": "4242",
}  # fmt: skip


def test_detect_reads_each_launcher():
    assert detect({}) is None
    run = detect(TORCHRUN_ENV)
    assert (run.launcher, run.rank, run.world_size, run.local_world_size, run.restarts) == ("torchrun", 1, 2, 1, 2)
    job = detect(SLURM_ENV)
    assert (job.launcher, job.rank, job.world_size, job.local_rank, job.local_world_size) == ("slurm", 3, 4, 1, 2)
    assert job.master_addr == "node07" and job.master_port == 20000 + 4242 and job.restarts == 0
    # A batch script's environment without a job step (no srun) is not a launched task.
    assert detect({k: v for k, v in SLURM_ENV.items() if k != "SLURM_STEP_ID"}) is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({**SLURM_ENV, "SLURM_NTASKS": None}, "SLURM_NTASKS is not set"),
        ({**SLURM_ENV, "SLURM_STEP_TASKS_PER_NODE": "2,1"}, "same number of tasks on every node"),
        ({**TORCHRUN_ENV, "RANK": "one"}, "RANK = 'one' is not an integer"),
    ],
)
def test_detect_names_the_bad_variable(env, message):
    with pytest.raises(LaunchError, match=message):
        detect({k: v for k, v in env.items() if v is not None})


def test_more_processes_than_slurm_cpus_is_named_with_both_numbers():
    job = {"SLURM_JOB_ID": "5", "SLURM_CPUS_PER_TASK": "3"}
    message = check_cpus(4, "DATALOADER.NUM_WORKERS", job)
    assert message.startswith("DATALOADER.NUM_WORKERS = 4: each task runs 5 processes on SLURM_CPUS_PER_TASK = 3 CPUs")
    assert "--cpus-per-task 5, or set DATALOADER.NUM_WORKERS 2" in message
    assert check_cpus(2, "DATALOADER.NUM_WORKERS", job) is None
    assert check_cpus(8, "DATALOADER.NUM_WORKERS", {"SLURM_CPUS_PER_TASK": "3"}) is None  # not in a job


def test_wait_for_master_gives_up_in_time():
    with pytest.raises(LaunchError, match=r"nobody answered at 127\.0\.0\.1:\d+ \(--dist-url\) within 1 s"):
        wait_for_master(f"tcp://{LOOPBACK}:{free_port()}", 1.0, "--dist-url")


def _one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _bad_launch(tmp_path, tiny_scenes, env, *extra):
    out = tmp_path / "out"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    result = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--config-file", CONFIG, *extra, *TINY_CLI, "OUTPUT_DIR", str(out)],
        cwd=REPO, env={**clean, **env, "DETECTRON2_DATASETS": str(tiny_scenes), "PYTHONWARNINGS": "ignore"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert not out.exists(), "a refused launch wrote its output folder"
    return result


def test_missing_slurm_variable_fails_in_one_line(tmp_path, tiny_scenes):
    env = {k: v for k, v in SLURM_ENV.items() if k != "SLURM_NTASKS"}
    _one_line_error(_bad_launch(tmp_path, tiny_scenes, env), "SLURM_NTASKS is not set")


def test_world_size_that_does_not_split_the_batch_fails_in_one_line(tmp_path, tiny_scenes):
    env = {**TORCHRUN_ENV, "WORLD_SIZE": "3", "RANK": "0"}
    _one_line_error(_bad_launch(tmp_path, tiny_scenes, env), "SOLVER.IMS_PER_BATCH = 2 does not split over 3 processes")


def test_unanswered_master_fails_in_one_line(tmp_path, tiny_scenes):
    port = free_port()
    env = {**SLURM_ENV, "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2",
           "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(port)}  # fmt: skip
    _one_line_error(_bad_launch(tmp_path, tiny_scenes, env, "--connect-timeout", "2"),
                    f"nobody answered at {LOOPBACK}:{port}", "within 2 s")  # fmt: skip
    by_hand = ["--num-machines", "2", "--machine-rank", "1", "--dist-url", f"tcp://{LOOPBACK}:{port}"]
    _one_line_error(_bad_launch(tmp_path, tiny_scenes, {}, *by_hand, "--connect-timeout", "2"), "(--dist-url)")


# --- torchrun, for real ---------------------------------------------------------------------

MAX_ITER, PERIOD = 60, 10


def _agents(port, out, tiny_scenes, max_restarts=1):
    """Two torchrun agents on loopback, as two machines with one CPU worker each."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{LOOPBACK}:{port}", "--rdzv-id", "libra-test",
        "--local-addr", LOOPBACK, "--max-restarts", str(max_restarts), "--monitor-interval", "0.5",
        str(REPO / "train_net.py"), *TWO_PROCESS_TRAINING, "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    env = train_net_env(tiny_scenes, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    logs = [open(out.parent / f"agent{i}.log", "a") for i in range(2)]
    return [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for log in logs
    ]


def _worker(agent) -> int:
    """The training process that a torchrun agent started."""
    found = children(agent.pid)
    assert len(found) == 1, f"agent {agent.pid} has children {found}"
    return found[0]


def test_torchrun_two_agents_survive_a_killed_worker_and_a_restarted_job(tmp_path, tiny_scenes, never_stopped):
    """Two agents train to the final checkpoint; a worker SIGKILLed after the first checkpoint is
    restarted by torchrun and resumes from it; the whole job killed later and started again by
    hand with the same command resumes from the last checkpoint too. No --resume anywhere. The
    final weights equal those of the same training never stopped, bit for bit."""
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    agents = _agents(port, out, tiny_scenes)
    try:
        wait_for(lambda: checkpoints(out), 400, "the first checkpoint", alive=agents)
        killed_after = checkpoints(out)[-1]
        os.kill(_worker(agents[1]), signal.SIGKILL)
        wait_for(lambda: len(starts((out / "log.txt").read_text())) == 2, 300, "the restarted group", alive=agents)
        # The job killed as a whole (both agents and their workers), after a later checkpoint.
        wait_for(lambda: any(i > killed_after for i in checkpoints(out)), 400, "a checkpoint after the restart",
                 alive=agents)  # fmt: skip
    finally:
        for agent in agents:
            stop_group(agent)
    job_killed_after = int(last_checkpoint(out).split("_")[1].split(".")[0])
    agents = _agents(port, out, tiny_scenes)
    try:
        for agent in agents:
            assert agent.wait(timeout=600) == 0, (out.parent / "agent0.log").read_text()[-3000:]
    finally:
        for agent in agents:
            stop_group(agent)
    log = (out / "log.txt").read_text()
    every_rank = "".join(p.read_text() for p in sorted(out.glob("log.txt*")))
    # Started at 0, resumed after the worker's death at the checkpoint before it, and after the
    # job's restart at the last checkpoint written: never before the last checkpoint.
    first_restart = starts(log)[1]
    assert first_restart in (killed_after + 1, killed_after + 1 + PERIOD), log[-3000:]
    assert starts(log) == [0, first_restart, job_killed_after + 1], starts(log)
    assert job_killed_after >= first_restart
    # torchrun counts restarts per agent: the agent whose worker died says 1, the other 0.
    assert "torchrun (job libra-test, restart 1): resuming from" in every_rank
    assert log.count("torchrun (job libra-test, restart 0): resuming from") >= 1
    assert (out / "model_final.pth").is_file() and last_checkpoint(out) == "model_final.pth"
    assert checkpoints(out) == list(range(PERIOD - 1, MAX_ITER, PERIOD))
    tensors = assert_same_weights(never_stopped, out)
    print(f"starts {starts(log)}, checkpoints {checkpoints(out)}, worker killed after {killed_after}, "
          f"job killed after {job_killed_after}; model_final.pth equal to the run never stopped ({tensors} tensors)")


def test_lazy_train_net_under_torchrun(tmp_path, tiny_scenes):
    """lazy_train_net.py joins the two workers that one torchrun agent started, trains to its final
    checkpoint, and, run again with a larger train.max_iter, resumes from it without --resume."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(REPO / "lazy_train_net.py"), "--config-file", RCNN_1X,
        *small_overrides(RCNN_1X, "fashion_scenes_train", "fashion_scenes_val"),
        "optimizer.lr=0.002", "train.checkpointer.period=2", "train.eval_period=0", f"train.output_dir={out}",
    ]  # fmt: skip
    env = train_net_env(tiny_scenes, OMP_NUM_THREADS="1")
    for max_iter in (4, 6):
        agent = subprocess.Popen([*command, f"train.max_iter={max_iter}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        try:
            output, _ = agent.communicate(timeout=600)
        finally:
            stop_group(agent)
        assert agent.returncode == 0, output[-3000:]
    log = (out / "log.txt").read_text()
    assert starts(log) == [0, 4], log[-3000:]
    assert re.search(r"torchrun \(job \S+, restart 0\): resuming from model_final.pth", log)
    # Detectron2's build_detection_train_loader of the config became the exact-order loader.
    assert "Resuming the data at batch 4 of seed" in log
    assert (out / "log.txt.rank1").is_file()  # two processes


def test_lazy_world_size_that_does_not_split_the_batch(monkeypatch, capsys, tiny_scenes):
    from libra_rcnn.engine.lazy import cli

    for key, value in {**TORCHRUN_ENV, "WORLD_SIZE": "3", "RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        cli("lazy_train_net.py", ["--config-file", RCNN_1X, *small_overrides(RCNN_1X)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lazy_train_net.py: error: dataloader.train.total_batch_size = 2 does not split over 3 "
                   "processes (torchrun's world size); use a multiple of 3")  # fmt: skip
