"""Helpers for the tests that start real launchers (torchrun, SLURM): free loopback ports, bounded
waits, process groups stopped by id, and what a run's output folder says about its iterations."""
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback address that nobody listens on (now)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.5, alive=()) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, or as soon as one of the
    ``alive`` processes has exited, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in alive:
            if proc.poll() is not None:
                raise AssertionError(f"waiting for {what}: process {proc.pid} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started, by its
    process group id: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def children(pid: int) -> List[int]:
    """The ids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def checkpoints(output_dir: Path) -> List[int]:
    """The iterations of the periodic checkpoints ``model_NNNNNNN.pth`` in ``output_dir``, sorted."""
    return sorted(int(m.group(1)) for p in output_dir.glob("model_*.pth") if (m := re.fullmatch(r"model_(\d+)\.pth", p.name)))


def last_checkpoint(output_dir: Path) -> Optional[str]:
    """The file named by Detectron2's ``last_checkpoint``, or None."""
    path = output_dir / "last_checkpoint"
    return path.read_text().strip() if path.is_file() else None


def starts(log: str) -> List[int]:
    """The iterations at which Detectron2's trainer started, in order ("Starting training from iteration N")."""
    return [int(n) for n in re.findall(r"Starting training from iteration (\d+)", log)]
