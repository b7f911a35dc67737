"""Hooks of the trainers and what they write: the peak memory and the inference time as scalars,
and ``metrics.json`` cut back to where a resumed run starts again."""
import json
import os
import resource
import time

import torch
from detectron2.engine import HookBase
from torch import nn

__all__ = ["PeakMemoryHook", "InferenceTimer", "truncate_metrics"]


class PeakMemoryHook(HookBase):
    """Writes the process's peak memory so far, in MiB, as the scalar ``peak_memory_mib``.

    On CUDA it is ``torch.cuda.max_memory_allocated`` (tensors only, the figure Detectron2
    prints as ``max_mem``); on the CPU the peak resident set size of the training process
    (``ru_maxrss``; data-loader workers not included). Both are host-side queries: no sync.
    The value lands in ``metrics.json`` and TensorBoard with the other scalars.
    """

    def after_step(self):
        device = torch.device(self.trainer.cfg.MODEL.DEVICE)
        if device.type == "cuda":
            mib = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        self.trainer.storage.put_scalar("peak_memory_mib", mib, smoothing_hint=False)


def truncate_metrics(path: str, start_iter: int) -> int:
    """Cut a Detectron2 ``metrics.json`` before the first line of iteration >= ``start_iter``.

    A run killed after its last checkpoint has logged iterations that the resumed run logs
    again; a torn last line (killed mid-write) is cut too. The file is truncated in place,
    so a ``JSONWriter`` that already holds it open in append mode writes after the kept part.

    Returns:
        the number of lines kept (0 when there is no file).
    """
    if not os.path.isfile(path):
        return 0
    kept_bytes, kept_lines = 0, 0
    with open(path, "rb") as f:
        for line in f:
            try:
                iteration = json.loads(line)["iteration"]
            except (ValueError, KeyError, TypeError):
                break
            if not line.endswith(b"\n") or iteration >= start_iter:
                break
            kept_bytes += len(line)
            kept_lines += 1
    os.truncate(path, kept_bytes)
    return kept_lines


class InferenceTimer(nn.Module):
    """Wraps a model for evaluation and times its forward passes: the model's pure compute, as
    Detectron2's ``inference_on_dataset`` logs it (data loading and evaluation excluded; on CUDA
    each pass is synchronised before it is timed), without the first ``min(warmup, passes - 1)``
    passes, Detectron2's rule.

    Args:
        model: the model ``inference_on_dataset`` calls, with a list of input dicts.
        warmup: passes not counted (Detectron2's: 5).
    """

    def __init__(self, model: nn.Module, warmup: int = 5):
        super().__init__()
        self.model = model
        self.warmup = warmup
        self.passes = []  # (seconds, images) of each pass

    def forward(self, inputs):
        cuda = next(self.model.parameters()).is_cuda
        start = time.perf_counter()
        outputs = self.model(inputs)
        if cuda:
            torch.cuda.synchronize()
        self.passes.append((time.perf_counter() - start, len(inputs)))
        return outputs

    def seconds_per_image(self) -> float:
        """Mean seconds per image over the timed passes (NaN before any pass)."""
        timed = self.passes[min(self.warmup, len(self.passes) - 1):]
        images = sum(n for _, n in timed)
        return sum(t for t, _ in timed) / images if images else float("nan")
