"""Host-device synchronisations of a training step, counted on the CPU.

On a GPU, an op whose output the host must read (``.item()``, ``bool(t)``), whose output shape
depends on the values (``nonzero``, boolean-mask indexing, ``unique``, NMS, ...), or an explicit
copy to the host (``.cpu()``, ``.tolist()``, ``.numpy()``) stops the host until the device has
caught up. :class:`HostSyncCounter` records each such op of the code run inside it, with the
Python line that called it, by watching every ATen op (a ``TorchDispatchMode``, which sees the
backward pass too) and the tensor methods that copy to the host. Each op is also charged to the
project's functions that were running, even where the line that made it is a library's (a
torchvision function called from a loss of the project); an op of the backward pass, to the
project's functions that ran the forward op it differentiates. It needs no GPU: the ops are
the same on the CPU. The GPU run (docs/gpu.md) checks the counts against CUDA's own
``torch.cuda.set_sync_debug_mode``.

    .venv/bin/python -m benchmarks.host_syncs [--out benchmarks/results/host_syncs.json]

prints, for the FashionScenes models (one training step, forward and backward, on the same
batch) and for each component alone, the number of syncs and where they are made;
tests/test_host_syncs.py keeps the counts.
"""
import argparse
import collections
import inspect
import json
import os
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncEvent", "HostSyncCounter", "count_syncs"]

REPO = Path(__file__).resolve().parents[1]

# ATen ops that make the host wait, and why.
SYNC_OPS = {
    "aten::_local_scalar_dense": "reads a value on the host (.item(), bool(), int(), float())",
    "aten::nonzero": "output shape depends on the values",
    "aten::argwhere": "output shape depends on the values",
    "aten::masked_select": "output shape depends on the values",
    "aten::_unique": "output shape depends on the values",
    "aten::_unique2": "output shape depends on the values",
    "aten::unique_dim": "output shape depends on the values",
    "aten::unique_consecutive": "output shape depends on the values",
    "aten::unique_dim_consecutive": "output shape depends on the values",
    "aten::bincount": "output size is the largest value",
    "aten::equal": "returns a Python bool",
    "torchvision::nms": "output shape depends on the values",
}
# Ops made on tensors that a GPU run keeps on the host (Detectron2 computes the padded batch size
# from the images' sizes on the CPU): counted here, but no device sync on a GPU.
HOST_SIDE_SITES = ("detectron2/structures/image_list.py",)
_OWN_FILE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_PROJECT_DIR = os.sep + "libra_rcnn" + os.sep


@dataclass(frozen=True)
class SyncEvent:
    """One host-device synchronisation: the op, why it syncs, the Python line that made it, and
    the project's frames (``libra_rcnn``) that were running, innermost first, each
    ``file:line (function)``: the Python stack's when the op ran, or, for an op of the backward
    pass, the stack's when the forward op it differentiates ran (empty where none were)."""

    op: str
    reason: str
    site: str
    callers: Tuple[str, ...] = ()

    def within(self, function: str) -> bool:
        """Whether the project's ``function`` (a name, ``"anchor_free_losses"``) made the op, itself,
        through the code it calls (Detectron2, torchvision, ...) or through its backward."""
        return any(frame.endswith(f" ({function})") for frame in self.callers)

    @property
    def on_device(self) -> bool:
        """False for the ops that a GPU run makes on host tensors (:data:`HOST_SIDE_SITES`)."""
        return not self.site.startswith(HOST_SIDE_SITES)

    @property
    def owner(self) -> str:
        """``libra_rcnn``, ``detectron2``, ``torchvision``, ``fvcore``, ... : whose code it is."""
        return self.site.split("/", 1)[0] if "/" in self.site else self.site


def _short(filename: str) -> str:
    """A file name from its package on (``detectron2/modeling/...``), or relative to the repo."""
    path = os.path.abspath(filename)
    marker = os.sep + "site-packages" + os.sep
    if marker in path:
        return path.split(marker, 1)[1]
    if "libra_rcnn" + os.sep in path:
        return "libra_rcnn" + path.split("libra_rcnn", 1)[1]
    try:
        return str(Path(path).relative_to(REPO))
    except ValueError:
        return path


def _call_site() -> str:
    """``file:line (function)`` of the innermost frame outside torch and this module; ``autograd``
    for an op of the backward pass (run by autograd's engine, with no Python caller)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = os.path.abspath(frame.filename)
        if frame.name == "backward" and name.startswith(_TORCH_DIR):  # Tensor.backward, autograd.backward
            break
        if name == _OWN_FILE or name.startswith(_TORCH_DIR) or frame.filename.startswith("<"):
            continue
        return f"{_short(name)}:{frame.lineno} ({frame.name})"
    return "autograd (backward pass)"


def _project_frames() -> Tuple[str, ...]:
    """The project's frames on the Python stack, innermost first, as ``file:line (function)``."""
    frames = []
    frame = inspect.currentframe()
    while frame is not None:
        if _PROJECT_DIR in frame.f_code.co_filename:
            frames.append(f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} ({frame.f_code.co_name})")
        frame = frame.f_back
    del frame
    return tuple(frames)


def _is_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _sync_reason(func, args, kwargs) -> Optional[str]:
    name = func.name()
    base = name.split(".")[0]
    if base in SYNC_OPS:
        return SYNC_OPS[base]
    if base == "aten::repeat_interleave" and isinstance(args[0] if args else None, torch.Tensor):
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if (args[0].dtype != torch.bool and isinstance(repeats, torch.Tensor) or name == "aten::repeat_interleave.Tensor") \
                and kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None):  # fmt: skip
            return "output size is the sum of the repeats (no output_size given)"
    if base == "aten::index" and len(args) > 1 and _is_bool_index(args[1]):
        return "boolean-mask indexing: output shape depends on the values"
    if base in ("aten::index_put", "aten::index_put_", "aten::_index_put_impl_") and len(args) > 1 \
            and _is_bool_index(args[1]):  # fmt: skip
        return "boolean-mask assignment: the mask's positions are read first"
    return None


class HostSyncCounter(TorchDispatchMode):
    """Records every host-device synchronisation of the code run inside it (see the module).

    ``events`` lists :class:`SyncEvent` in the order made. Besides ATen ops it records the
    tensor methods that copy to the host, ``Tensor.cpu``, ``.tolist``, ``.numpy`` and
    ``.to("cpu")`` (a literal ``"cpu"``; ``.to(device)`` with a ``torch.device`` cannot be
    told apart from a device-agnostic move on a CPU run and is not counted).

    The backward pass runs without the forward's Python stack: every autograd node created in the
    project's code inside the counter (``torch.autograd.graph.node_creation_hook``) keeps the
    project's frames of its creation, and the ops run while the node runs are charged to them.
    """

    _METHODS = ("cpu", "tolist", "numpy", "to")

    def __init__(self):
        super().__init__()
        self.events: List[SyncEvent] = []
        self._saved: Dict[str, Callable] = {}
        self._node_hook = None
        self._running = threading.local()  # per thread: the callers of the autograd nodes running

    def _callers(self) -> Tuple[str, ...]:
        running = getattr(self._running, "nodes", None)
        return _project_frames() + (running[-1] if running else ())

    def _event(self, op: str, reason: str) -> SyncEvent:
        return SyncEvent(op, reason, _call_site(), self._callers())

    def _on_node_created(self, node) -> None:
        frames = _project_frames()
        if not frames or "AccumulateGrad" in node.name():
            return

        def enter(grad_outputs):
            if not hasattr(self._running, "nodes"):
                self._running.nodes = []
            self._running.nodes.append(frames)

        def leave(grad_inputs, grad_outputs):
            self._running.nodes.pop()

        node.register_prehook(enter)
        node.register_hook(leave)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = _sync_reason(func, args, kwargs)
        if reason:
            self.events.append(self._event(func.name().replace("::", "."), reason))
        return func(*args, **kwargs)

    def _wrap(self, name: str, original: Callable) -> Callable:
        counter = self

        def method(tensor, *args, **kwargs):
            to_host = name != "to" or "cpu" in [a for a in args if isinstance(a, str)] + [kwargs.get("device")]
            if to_host:
                counter.events.append(counter._event(f"Tensor.{name}", "copies to the host"))
            return original(tensor, *args, **kwargs)

        return method

    def __enter__(self):
        for name in self._METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(name, self._saved[name]))
        if hasattr(torch.autograd.graph, "node_creation_hook"):  # without it (older torch), backward ops go uncharged
            self._node_hook = torch.autograd.graph.node_creation_hook(self._on_node_created)
            self._node_hook.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()
        if self._node_hook is not None:
            self._node_hook.__exit__(*exc)
            self._node_hook = None
        return super().__exit__(*exc)

    def by_site(self) -> Dict[str, int]:
        """``"op at site"`` -> count, in first-seen order."""
        return dict(collections.Counter(f"{e.op} at {e.site}" for e in self.events))


def count_syncs(fn: Callable[[], object]) -> List[SyncEvent]:
    """The synchronisations made while running ``fn()``."""
    with HostSyncCounter() as counter:
        fn()
    return counter.events


def cuda_sync_warnings(fn: Callable[[], object]) -> List[str]:
    """CUDA's own count: the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` while running
    ``fn()`` on a GPU, one per synchronising CUDA call (their messages)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]


# --- the audit -------------------------------------------------------------------------------

PAIRS = [  # (baseline, Libra counterpart) FashionScenes configs
    ("faster_rcnn_R_18_FPN_GN", "libra_rcnn_R_18_FPN_GN"),
    ("retinanet_R_18_FPN_GN", "libra_retinanet_R_18_FPN_GN"),
    ("fsaf_R_18_FPN_GN", "ab_fsaf_R_18_FPN_GN"),
]


def training_batch(dataset: str, num_images: int = 2) -> List[dict]:
    """The first ``num_images`` records of a registered dataset, mapped for training (fixed
    order, no flip: the same batch for every model)."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    mapper = DatasetMapper(is_train=True, augmentations=[T.NoOpTransform()], image_format="BGR")
    return [mapper(dict(r)) for r in DatasetCatalog.get(dataset)[:num_images]]


def step_events(cfg, batch: Sequence[dict], iteration: int = 0, cuda_check: bool = False):
    """Syncs of one training step of ``cfg``'s model on ``batch``: forward and backward.

    Returns the :class:`SyncEvent` list; with ``cuda_check`` (a model on a GPU), also the
    messages of CUDA's own sync debug mode for the same step, as ``(events, cuda_messages)``.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(cfg).train()

    def step():
        with EventStorage(iteration):
            losses = model(list(batch))
            sum(losses.values()).backward()

    with EventStorage(iteration):  # a first step outside the count: lazy initialisations
        sum(model(list(batch)).values()).backward()
    events = count_syncs(step)
    return (events, cuda_sync_warnings(step)) if cuda_check else events


def audit_models(configs: Sequence[str], batch: Sequence[dict], device: str = "cpu") -> Dict[str, List[SyncEvent]]:
    """Config name -> the syncs of one training step (iteration 0: no training statistics).

    On ``cuda``, the count of CUDA's sync debug mode for the same step is in
    :data:`CUDA_COUNTS` (config name -> number of warnings).
    """
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import load_cfg

    out = {}
    for name in configs:
        cfg = load_cfg(f"configs/FashionScenes/{name}.yaml", ["MODEL.DEVICE", device])
        if device == "cuda":
            out[name], CUDA_COUNTS[name] = step_events(cfg, batch, cuda_check=True)
        else:
            out[name] = step_events(cfg, batch)
    return out


CUDA_COUNTS: Dict[str, List[str]] = {}


def audit_components(device: str = "cpu", count: Callable = count_syncs) -> Dict[str, list]:
    """The project's components alone, on synthetic inputs on ``device``, forward and backward
    where they have a backward: BalancedRoISampler, the BFP, balanced L1, FSAF's targets, online
    level selection and GIoU loss. ``count`` runs each and returns what it counted
    (:func:`count_syncs`, or :func:`cuda_sync_warnings` on a GPU)."""
    from libra_rcnn import (
        BalancedFeaturePyramid,
        BalancedRoISampler,
        balanced_l1_loss,
        fsaf_targets,
        giou_loss,
        select_levels,
    )

    g = torch.Generator().manual_seed(0)
    on = torch.Generator(device=device).manual_seed(0)
    out: Dict[str, list] = {}
    n, images, gts = 4000, 2, 12
    gt_classes = torch.randint(0, 11, (n,), generator=g).to(device)
    max_iou = torch.rand(n, generator=g).to(device)
    gt_index = torch.randint(0, gts, (n,), generator=g).to(device)
    image_index = (torch.arange(n) * images // n).to(device)
    for binning in ("paper", "mmdet"):
        sampler = BalancedRoISampler(512, 0.25, binning=binning, floor_thr=0.1 if binning == "paper" else -1.0,
                                     floor_fraction=0.25 if binning == "paper" else 0.0)  # fmt: skip
        out[f"BalancedRoISampler ({binning} bins)"] = count(
            lambda: sampler(gt_classes, max_iou, gt_index, image_index, images, gts, 10, on))

    class Levels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.levels = {f"p{i}": torch.nn.Parameter(torch.randn(2, 16, 64 >> (i - 2), 48 >> (i - 2), generator=g).to(device))
                           for i in range(2, 7)}  # fmt: skip
            for k, v in self.levels.items():
                self.register_parameter(k, v)

        def forward(self, x):
            return dict(self.levels)

        def output_shape(self):
            from detectron2.layers import ShapeSpec

            return {k: ShapeSpec(channels=16, stride=2**int(k[1:])) for k in self.levels}

    for refine in ("non_local", "conv", "none"):
        bfp = BalancedFeaturePyramid(Levels(), refine_level=2, refine_type=refine).to(device)
        out[f"BFP ({refine}), forward + backward"] = count(
            lambda: sum(v.sum() for v in bfp(torch.zeros(1, device=device)).values()).backward())
    pred = torch.randn(256, 4, generator=g).to(device).requires_grad_()
    target = torch.randn(256, 4, generator=g).to(device)
    for variant in ("paper", "mmdet"):
        out[f"balanced L1 ({variant}), forward + backward"] = count(
            lambda: balanced_l1_loss(pred, target, beta=0.11, variant=variant, reduction="sum").backward())

    points = (torch.rand(3000, 2, generator=g) * 256).to(device)
    strides = torch.full((3000,), 8.0, device=device)
    boxes = torch.rand(2, 5, 2, generator=g) * 200
    gt_boxes = torch.cat([boxes, boxes + 20 + torch.rand(2, 5, 2, generator=g) * 50], dim=2).to(device)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2], device=device)
    pixel_loss = torch.rand(2, 3000, generator=g).to(device)
    level_ids = torch.arange(3000, device=device) % 5

    def fsaf_losses():
        owner, _ = fsaf_targets(points, strides, gt_boxes, valid, 0.2, 0.5)
        select_levels(pixel_loss, owner, level_ids, 5, 5)

    out["FSAF targets and online level selection"] = count(fsaf_losses)
    # Boxes around the GT boxes, overlapping them or not; a point and a segment among them.
    corner = boxes + (torch.rand(2, 5, 2, generator=g) - 0.5) * 160
    side = torch.rand(2, 5, 2, generator=g) * 50
    side[:, 0], side[:, 1, 0] = 0.0, 0.0
    pred_boxes = torch.cat([corner, corner + side], dim=2).to(device).requires_grad_()
    out["FSAF's GIoU loss, forward + backward"] = count(lambda: giou_loss(pred_boxes, gt_boxes).sum().backward())
    return out


def audit_label_and_sample(batch: Sequence[dict]) -> Dict[str, List[SyncEvent]]:
    """``label_and_sample_proposals`` of Detectron2's StandardROIHeads and of LibraROIHeads on
    the same proposals (the RPN's of the same model on ``batch``)."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import load_cfg

    out = {}
    for name in ("faster_rcnn_R_18_FPN_GN", "libra_rcnn_R_18_FPN_GN"):
        cfg = load_cfg(f"configs/FashionScenes/{name}.yaml", ["MODEL.DEVICE", "cpu"])
        torch.manual_seed(0)
        model = build_model(cfg).train()
        with EventStorage(0), torch.no_grad():
            images = model.preprocess_image(list(batch))
            features = model.backbone(images.tensor)
            targets = [x["instances"] for x in batch]
            proposals, _ = model.proposal_generator(images, features, targets)
            heads = model.roi_heads
            out[f"{type(heads).__name__}.label_and_sample_proposals"] = count_syncs(
                lambda: heads.label_and_sample_proposals(proposals, targets))
    return out


def summarize(events: Dict[str, List[SyncEvent]]) -> Dict[str, dict]:
    """Name -> {"count", "on_device" (the count without :data:`HOST_SIDE_SITES`), "by_owner",
    "sites": {"op at site": count}}."""
    return {name: {"count": len(e), "on_device": sum(x.on_device for x in e),
                   "by_owner": dict(collections.Counter(x.owner for x in e)),
                   "sites": dict(collections.Counter(f"{x.op} at {x.site}" for x in e))}
            for name, e in events.items()}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_syncs", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
                        help="DETECTRON2_DATASETS root holding fashion_scenes/")  # fmt: skip
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the models on the GPU, each count beside CUDA's own (set_sync_debug_mode)")  # fmt: skip
    args = parser.parse_args(argv)
    import libra_rcnn

    libra_rcnn.register_fashion_scenes(os.path.join(args.datasets, "fashion_scenes"), prefix="audit_scenes")
    batch = training_batch("audit_scenes_train")
    result = {"device": args.device,
              "models": summarize(audit_models([c for pair in PAIRS for c in pair], batch, args.device)),
              "label_and_sample_proposals": summarize(audit_label_and_sample(batch)),
              "components": summarize(audit_components())}  # fmt: skip
    if args.device == "cuda":
        result["components_cuda_sync_debug_mode"] = {k: len(v) for k, v in audit_components("cuda", cuda_sync_warnings).items()}
    for name, messages in CUDA_COUNTS.items():
        result["models"][name]["cuda_sync_debug_mode"] = len(messages)
        result["models"][name]["cuda_messages"] = sorted(set(messages))
    for section, rows in result.items():
        if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
            print(f"== {section}: {rows}")
            continue
        print(f"== {section}")
        for name, row in rows.items():
            cuda = f", CUDA's debug mode {row['cuda_sync_debug_mode']}" if "cuda_sync_debug_mode" in row else ""
            print(f"{row['count']:4d} ({row['on_device']:3d} on the device{cuda})  {name}  {row['by_owner']}")
            for site, count in row["sites"].items():
                print(f"        {count:3d} x {site}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
