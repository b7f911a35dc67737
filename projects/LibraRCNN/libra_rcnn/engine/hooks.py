"""Hooks of the trainers and what they write: the peak memory and the inference time as scalars,
``metrics.json`` cut back to where a resumed run starts again, and the loss curves as a PNG."""
import json
import os
import resource
import time

import torch
from detectron2.engine import HookBase
from torch import nn

__all__ = ["PeakMemoryHook", "InferenceTimer", "LossCurves", "draw_loss_curves", "truncate_metrics"]


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


def draw_loss_curves(metrics_path: str, output: str) -> str:
    """Draw the losses of a Detectron2 ``metrics.json`` (one JSON object per line, written by
    ``JSONWriter`` every ``PeriodicWriter`` period): ``total_loss`` and each ``loss_*`` against
    the iteration, one panel for the total and one for its terms, as a PNG at ``output``.

    Returns:
        ``output``.

    Raises:
        ValueError: when ``metrics_path`` holds no loss.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    with open(metrics_path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a torn last line of a killed run
                continue
            for key, value in record.items():
                if key == "total_loss" or key.startswith("loss_"):
                    series.setdefault(key, []).append((record["iteration"], value))
    if not series:
        raise ValueError(f"{metrics_path} holds no loss (total_loss, loss_*)")
    fig, (total, terms) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys in ((total, ["total_loss"]), (terms, sorted(k for k in series if k != "total_loss"))):
        for key in keys:
            if key in series:
                ax.plot(*zip(*series[key]), label=key, linewidth=1.2)
        ax.set(xlabel="iteration", ylabel="loss (median of the logging window)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    total.set_title("total loss")
    terms.set_title("its terms")
    run = os.path.dirname(os.path.abspath(metrics_path))
    fig.suptitle(os.path.join(os.path.basename(os.path.dirname(run)), os.path.basename(run)), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


class LossCurves(HookBase):
    """After training, draws ``OUTPUT_DIR/metrics.json``'s losses into ``OUTPUT_DIR/loss_curves.png``
    (:func:`draw_loss_curves`), on the main process; TensorBoard's event file is written as before.
    Must run after Detectron2's ``PeriodicWriter``, which flushes the last scalars after training.

    Args:
        output_dir: the run's folder (``OUTPUT_DIR``, LazyConfig ``train.output_dir``).
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def after_train(self):
        metrics = os.path.join(self.output_dir, "metrics.json")
        if os.path.isfile(metrics):
            try:
                draw_loss_curves(metrics, os.path.join(self.output_dir, "loss_curves.png"))
            except ValueError:  # no loss was logged (a run stopped before its first write)
                pass
