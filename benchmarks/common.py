"""Timing, memory and environment helpers shared by the benchmarks.

Times are wall-clock seconds (``time.perf_counter``), taken after ``torch.cuda.synchronize``
on a GPU so that they cover the queued kernels. Memory is MiB (2**20 bytes).
"""

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

MIB = 2**20


def synchronize(device: str) -> None:
    """Wait for the queued kernels of ``device`` ("cpu" or "cuda"); a no-op on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds that one call of ``fn`` takes, its GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def repeat_timed(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> List[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device) for _ in range(repeats)]


def median(values: List[float]) -> float:
    """The median, or NaN for an empty list."""
    return statistics.median(values) if values else float("nan")


def rss_mib() -> float:
    """The process's resident set size now, in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: str) -> None:
    """Start a new CUDA peak-memory window (the CPU's ``ru_maxrss`` cannot be reset)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: str) -> float:
    """Peak memory: CUDA tensors since :func:`reset_peak` on a GPU, else the process's peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / MIB
    return peak_rss_mib()


def devices(requested: Optional[List[str]] = None) -> List[str]:
    """The devices to measure: the CPU, and "cuda" when ``torch.cuda.is_available()``."""
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if not requested:
        return available
    missing = [d for d in requested if d not in available]
    if missing:
        raise ValueError(f"--devices {' '.join(requested)}: {missing} not available here (available: {available})")
    return list(requested)


def load_average() -> List[float]:
    """The 1, 5 and 15 minute load averages (other processes on a shared machine)."""
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> Dict[str, object]:
    """Hardware and versions, for the report."""
    import detectron2
    import numpy

    import libra_rcnn

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "detectron2": detectron2.__version__,
        "numpy": numpy.__version__,
        "git_commit": _git_commit(),
        "libra_rcnn": os.path.relpath(os.path.dirname(libra_rcnn.__file__)),
    }


def regenerate_docs() -> None:
    """``python docs/generate.py``: every generated block of the README and docs rewritten from the
    committed results, the reports just written included (``make docs``).

    Raises:
        subprocess.CalledProcessError: if the script fails.
    """
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "docs" / "generate.py")], check=True, cwd=repo)
