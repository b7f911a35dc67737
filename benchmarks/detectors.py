"""Training step and inference of detector pairs, baseline vs Libra, side by side.

Each model of a pair lives in a worker process of its own (so that its peak memory is its
own), both workers are alive at once, and the parent asks them for one measurement at a time,
alternating A B B A ..., so that drift on a shared machine hits both models alike. Only one
worker computes at any moment.

- Training step: Detectron2's ``SimpleTrainer.run_step`` (forward, losses, backward, the
  optimizer's step: Detectron2's ``build_optimizer``, SGD with momentum) on the same batch in
  every step and for both models. ``SOLVER.BASE_LR`` is set to 0: the SGD update does the
  same arithmetic for any learning rate, and the weights stay as loaded, so every step does the
  same work (an R-50 with frozen BatchNorm and no ImageNet weights diverges within a few steps
  at the config's learning rate).
- Inference: ``model.eval()`` on one image at a time under ``torch.no_grad()`` (as
  Detectron2's ``inference_on_dataset``), post-processing included.
- Weights: the FashionScenes pairs load their trained checkpoints (``--checkpoints``; the
  command stops when they are missing, unless ``--random-weights`` asks for random init); the
  COCO-size pairs start from random init: the baseline's frozen BatchNorm is calibrated on the
  batch (:func:`calibrate_frozen_batchnorm`), so that the models process the full 1000
  proposals, and the Libra model takes the baseline's weights for every module the two have in
  common (:func:`load_common_weights`). Only what the method adds (the BFP's refinement) keeps
  its own init, so the work that depends on the weights (the sizes of the proposals RoIAlign
  pools, the boxes NMS keeps) differs between the two only as far as the method changes the
  features, as between trained models, and not by two unrelated random draws.
- Peak memory: CUDA ``max_memory_allocated`` over the phase on a GPU; on the CPU the worker's
  peak resident set size (``ru_maxrss``: weights, gradients, optimizer state, activations and
  the ~0.4 GiB of the libraries). Inference runs before training in each worker, so the CPU's
  inference peak is not masked by training.
"""

import os
import pickle
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .common import median, peak_mib, reset_peak, rss_mib, synchronize, timed

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Pair:
    """A baseline and its Libra counterpart, trained and run on the same inputs."""

    suite: str  # "FashionScenes" or "COCO size"
    family: str  # "rcnn" or "retinanet"
    baseline_name: str
    baseline_config: str
    libra_name: str
    libra_config: str


PAIRS = [
    Pair(
        "FashionScenes",
        "rcnn",
        "Faster R-CNN",
        "configs/FashionScenes/ablation/table2_l1_a_baseline.yaml",
        "Libra R-CNN",
        "configs/FashionScenes/ablation/table2_l1_d_balanced_l1.yaml",
    ),
    Pair(
        "FashionScenes",
        "retinanet",
        "RetinaNet",
        "configs/FashionScenes/retinanet_R_18_FPN_GN.yaml",
        "Libra RetinaNet",
        "configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml",
    ),
    Pair(
        "COCO size",
        "rcnn",
        "Faster R-CNN R-50",
        "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
        "Libra R-CNN R-50",
        "configs/COCO-Detection/libra_rcnn_R_50_FPN_1x.yaml",
    ),
    Pair(
        "COCO size",
        "retinanet",
        "RetinaNet R-50",
        "configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml",
        "Libra RetinaNet R-50",
        "configs/COCO-Detection/libra_retinanet_R_50_FPN_1x.yaml",
    ),
]

COCO_SIZE = (800, 1333)  # (height, width): the paper's single-scale training input


def load_config(config_file: str, device: str):
    """The config with the project's keys, on ``device``, without any download."""
    from detectron2.config import get_cfg

    import libra_rcnn

    cfg = get_cfg()
    libra_rcnn.add_libra_config(cfg)
    cfg.merge_from_file(str(REPO / config_file))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", "SOLVER.BASE_LR", 0.0])
    return cfg


def checkpoint_for(config_file: str, checkpoints: Optional[str]) -> Optional[str]:
    """The trained weights of a config in a folder of runs, else None.

    ``<checkpoints>/<config name>/seed_<N>/model_final.pth`` of the lowest seed N (the layout of
    ``python -m libra_rcnn.ablation --out <checkpoints>`` and ``scripts/table2_seeds.sh``), or
    ``<checkpoints>/<config name>/model_final.pth`` (a ``train_net.py`` OUTPUT_DIR).
    """
    if not checkpoints:
        return None
    folder = Path(checkpoints) / Path(config_file).stem
    seeds = sorted(folder.glob("seed_*/model_final.pth"), key=lambda p: int(p.parent.name[5:]))
    for path in seeds + [folder / "model_final.pth"]:
        if path.is_file():
            return str(path)
    return None


def missing_checkpoints(pair: Pair, checkpoints: str) -> List[str]:
    """The configs of a FashionScenes ``pair`` that have no trained weights in ``checkpoints``.

    Args:
        pair: one of :data:`PAIRS`.
        checkpoints: the folder searched by :func:`checkpoint_for` (either of its two layouts).

    Returns:
        the baseline's and the Libra model's config files without weights, in that order; empty
        when both have them, and for a COCO-size pair (timed with random init by design).
    """
    if pair.suite != "FashionScenes":
        return []
    return [c for c in (pair.baseline_config, pair.libra_config) if checkpoint_for(c, checkpoints) is None]


def make_batch(config_file: str, suite: str, batch_size: int, seed: int) -> List[dict]:
    """The training batch of a pair: the first ``batch_size`` images of ``fashion_scenes_train``.

    Mapped by Detectron2's ``DatasetMapper`` with the config's augmentations (FashionScenes:
    256 px, random flip, seeded), or resized to 800 x 1333 for the COCO-size pair (boxes
    scaled with the image; class ids kept, in the config's 80 classes).

    Raises:
        FileNotFoundError: if the dataset has not been built (naming the command that builds it).
    """
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    import libra_rcnn  # noqa: F401  (registers fashion_scenes_train)

    try:
        dicts = DatasetCatalog.get("fashion_scenes_train")[:batch_size]
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}: build the dataset first: .venv/bin/python -m libra_rcnn.data --out datasets/fashion_scenes"
        ) from e
    cfg = load_config(config_file, "cpu")
    if suite == "COCO size":
        mapper = DatasetMapper(cfg, is_train=True, augmentations=[T.Resize(COCO_SIZE)])
    else:
        mapper = DatasetMapper(cfg, is_train=True)
    np.random.seed(seed)
    return [mapper(d) for d in dicts]


def inference_inputs(batch: List[dict]) -> List[dict]:
    """The images of a mapped training ``batch`` as inference inputs: ``image``, and ``height`` and
    ``width`` equal to its own size, so that the detections are not rescaled."""
    return [{"image": d["image"], "height": d["image"].shape[1], "width": d["image"].shape[2]} for d in batch]


def calibrate_frozen_batchnorm(model, inputs: List[dict]) -> int:
    """Sets every ``FrozenBatchNorm2d`` of the backbone to its input's statistics on ``inputs``.

    Without ImageNet weights (nothing is downloaded here), an R-50 with frozen identity
    BatchNorm grows its activations to thousands; the RPN's box deltas then overflow and most
    proposals are dropped as empty, so a training step or an inference would do far less work
    than with real weights, and a different amount for each model. One forward pass with each
    layer set to normalise its own input (per-channel mean and variance over the batch, in
    order of execution) keeps the activations O(1), as trained weights do. Both models of a
    pair are built from the same seed and calibrated on the same images.

    Returns:
        the number of layers calibrated (0 for a model without frozen BatchNorm).
    """
    from detectron2.layers import FrozenBatchNorm2d

    layers = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    return set_to_input_statistics(layers, lambda: model.backbone(model.preprocess_image(inputs).tensor))


def set_to_input_statistics(layers: List[torch.nn.Module], forward) -> int:
    """Sets the ``running_mean`` and ``running_var`` of each normalisation layer in ``layers`` to
    the per-channel mean and variance of its own (B, C, H, W) input during one ``forward()`` call,
    under ``no_grad``, in order of execution (:func:`calibrate_frozen_batchnorm`).

    Returns:
        the number of layers.
    """

    def set_statistics(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(set_statistics) for m in layers]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return len(layers)


def load_common_weights(model, source: Dict[str, torch.Tensor]) -> int:
    """Copies into ``model`` every entry of the state dict ``source`` that ``model`` also has.

    A balanced feature pyramid wraps its FPN as ``backbone.fpn``, so ``backbone.fpn.X`` takes the
    plain FPN's ``backbone.X``; an entry is taken only where the shapes agree.

    Returns:
        the number of state-dict entries copied.
    """
    state = model.state_dict()
    copied = 0
    for key, value in state.items():
        for name in (key, key.replace("backbone.fpn.", "backbone.", 1)):
            if name in source and source[name].shape == value.shape:
                value.copy_(source[name])
                copied += 1
                break
    return copied


def _worker(
    conn, config_file: str, weights: Optional[str], device: str, batch_bytes: bytes, seed: int, threads: int,
    precision: str = "float32", shared: Optional[tuple] = None,
) -> None:
    """Worker process: builds one model, then answers the parent's measurement requests.

    ``precision="amp"``: on a GPU, Detectron2's ``AMPTrainer`` (float16 autocast, gradient
    scaling) and float16 autocast in inference; on the CPU, bfloat16 autocast around both.
    ``shared``: without ``weights``, ``("save", path)`` calibrates the model and saves its state
    dict to ``path``; ``("load", path)`` takes the common entries of that state dict instead.
    """
    try:
        torch.set_num_threads(threads)
        from contextlib import nullcontext

        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.engine import AMPTrainer, SimpleTrainer
        from detectron2.modeling import build_model
        from detectron2.solver import build_optimizer
        from detectron2.utils.env import seed_all_rng
        from detectron2.utils.events import EventStorage

        seed_all_rng(seed)
        cfg = load_config(config_file, device)
        model = build_model(cfg)
        batch = pickle.loads(batch_bytes)
        calibrated = shared_entries = 0
        if weights:
            DetectionCheckpointer(model).load(weights)
        elif shared and shared[0] == "load":
            shared_entries = load_common_weights(model, torch.load(shared[1], map_location=device))
        else:
            calibrated = calibrate_frozen_batchnorm(model, batch)
            if shared:
                torch.save(model.state_dict(), shared[1])
        images = inference_inputs(batch)
        optimizer = build_optimizer(cfg, model)
        cuda_amp = precision == "amp" and device.startswith("cuda")
        trainer = (AMPTrainer if cuda_amp else SimpleTrainer)(model, _repeat(batch), optimizer)
        storage = EventStorage(0)
        trainer.storage = storage
        state = {"step": 0, "image": 0}
        cpu_amp = precision == "amp" and not cuda_amp

        def autocast():
            if cuda_amp:
                return torch.autocast("cuda", dtype=torch.float16)
            return torch.autocast("cpu", dtype=torch.bfloat16) if cpu_amp else nullcontext()

        def train_step():
            trainer.iter = storage.iter = state["step"]
            with storage, (autocast() if cpu_amp else nullcontext()):
                trainer.run_step()
            state["step"] += 1

        def infer():
            with torch.no_grad(), autocast():
                state["last"] = model([images[state["image"] % len(images)]])[0]["instances"].to("cpu")
            state["image"] += 1

        conn.send(("ready", {"rss_idle_mib": rss_mib(), "parameters": sum(p.numel() for p in model.parameters()),
                             "calibrated_frozen_bn": calibrated, "shared_entries": shared_entries,
                             "state_entries": len(model.state_dict())}))  # fmt: skip
        while True:
            command, arg = conn.recv()
            if command == "phase":  # a new peak-memory window: "train" or "inference"
                model.train(arg == "train")
                synchronize(device)
                reset_peak(device)
                conn.send(("ok", None))
            elif command == "train":
                conn.send(("ok", timed(train_step, device)))
            elif command == "infer":
                conn.send(("ok", timed(infer, device)))
            elif command == "peak":
                conn.send(("ok", peak_mib(device)))
            elif command == "detections":  # of the last inference: boxes (XYXY_ABS), scores, classes
                last = state["last"]
                conn.send(("ok", (last.pred_boxes.tensor, last.scores, last.pred_classes)))
            else:
                conn.send(("ok", None))
                return
    except Exception:  # reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))


def _repeat(batch):
    while True:
        yield batch


class _Worker:
    """A measuring process: ``target(conn, *args)`` (default :func:`_worker`), asked one command at
    a time through a pipe; it answers ``("ready", info)`` once built."""

    def __init__(self, ctx, *args, target=None):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target or _worker, args=(child, *args))
        self.process.start()
        self.info = self._answer()

    def _answer(self):
        status, value = self.conn.recv()
        if status == "error":
            self.process.join()
            raise RuntimeError(f"benchmark worker failed:\n{value}")
        return value

    def ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self._answer()

    def close(self):
        if self.process.is_alive():
            try:
                self.ask("stop")
            except (EOFError, BrokenPipeError, RuntimeError):
                pass
        self.process.join(timeout=60)


def _alternate(workers: Dict[str, _Worker], command: str, warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Seconds of ``repeats`` measurements per worker after ``warmup`` each, in A B B A order."""
    names = list(workers)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for round_ in range(warmup + repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            seconds = workers[name].ask(command)
            if round_ >= warmup:
                times[name].append(seconds)
    return times


PHASES = {"infer": "inference", "train": "train"}


def measure_phases(workers: Dict[str, "_Worker"], models: Dict[str, dict], counts: Dict[str, tuple], log) -> None:
    """Inference, then training steps, of every worker, alternating (:func:`_alternate`).

    ``counts``: ``{"infer": (warmup, repeats), "train": (warmup, repeats)}``. Writes into
    ``models[key]`` (one dict per worker) ``{unit}_times_s``, the median ``{unit}_s`` and the
    phase's ``{unit}_peak_mib``; ``log(phase)`` is called as each phase starts.
    """
    for unit, (warmup, repeats) in counts.items():
        for w in workers.values():
            w.ask("phase", PHASES[unit])
        log(PHASES[unit])
        times = _alternate(workers, unit, warmup, repeats)
        for key, w in workers.items():
            models[key][f"{unit}_times_s"] = [round(t, 5) for t in times[key]]
            models[key][f"{unit}_s"] = median(times[key])
            models[key][f"{unit}_peak_mib"] = w.ask("peak")


def ratios(model: dict, reference: dict, keys=("train_s", "infer_s")) -> Dict[str, float]:
    """``model[k] / reference[k]`` for each of ``keys``: the ratios of the medians (and peaks)."""
    return {k: model[k] / reference[k] for k in keys}


def paired_ratios(model: dict, reference: dict) -> Dict[str, List[float]]:
    """``model`` / ``reference`` of each round's pair of measurements, sorted, per unit: their
    spread shows the noise of the ratio of the medians."""
    return {unit: sorted(m / r for r, m in zip(reference[f"{unit}_times_s"], model[f"{unit}_times_s"]))
            for unit in ("train", "infer")}  # fmt: skip


def over_processes(runs: List[dict], model: str, reference: str) -> dict:
    """One result from ``runs`` of the same measurement, each with fresh worker processes.

    On a CPU the time of a process depends on its own history (how its allocator serves large
    tensors), so two runs of the same pair can differ by more than the rounds within one run.
    The combined result keeps the first run's description; per model, each ``{unit}_s`` and
    peak is the median over the runs and the raw times are concatenated; ``ratio[k]`` is the
    median over the runs of each run's ratio, ``process_ratios[k]`` all of them, sorted; and
    ``paired_ratios`` pools the rounds of every run.

    Args:
        runs: results of :func:`measure_pair` (``model="libra"``, ``reference="baseline"``) or of
            ``benchmarks.authors.measure_authors`` (``"ours"``, ``"mmdetection"``).
    """
    if len(runs) == 1:
        return {**runs[0], "process_ratios": {k: [runs[0]["ratio"][k]] for k in runs[0]["ratio"]}}
    combined = dict(runs[0])
    combined["models"] = {}
    for key in (model, reference):
        merged = dict(runs[0]["models"][key])
        for field, value in runs[0]["models"][key].items():
            values = [r["models"][key][field] for r in runs]
            if field.endswith("_times_s"):
                merged[field] = [t for v in values for t in v]
            elif isinstance(value, float):
                merged[field] = median(values)
        combined["models"][key] = merged
    combined["process_ratios"] = {k: sorted(r["ratio"][k] for r in runs) for k in runs[0]["ratio"]}
    combined["ratio"] = {k: median(v) for k, v in combined["process_ratios"].items()}
    combined["paired_ratios"] = {unit: sorted(x for r in runs for x in r["paired_ratios"][unit])
                                 for unit in runs[0]["paired_ratios"]}  # fmt: skip
    combined["processes"] = len(runs)
    return combined


def build_pair(pair: Pair, seed: int = 0):
    """Both models of a COCO-size ``pair`` in this process, CPU, as the workers build them: the same
    seed, the baseline's frozen BatchNorm calibrated, the Libra model with the baseline's common
    weights (:func:`load_common_weights`).

    Returns:
        ([baseline, libra], batch): the models (training mode) and the pair's one-image batch.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    batch = make_batch(pair.baseline_config, pair.suite, 1, seed)
    models, state = [], None
    for config in (pair.baseline_config, pair.libra_config):
        seed_all_rng(seed)
        model = build_model(load_config(config, "cpu"))
        if state is None:
            calibrate_frozen_batchnorm(model, batch)
            state = model.state_dict()
        else:
            load_common_weights(model, state)
        models.append(model)
    return models, batch


def measure_pair(
    pair: Pair,
    device: str,
    batch_size: int,
    train_warmup: int,
    train_repeats: int,
    infer_warmup: int,
    infer_repeats: int,
    checkpoints: Optional[str],
    seed: int,
    threads: int,
    log=print,
    precision: str = "float32",
) -> dict:
    """Training step and inference of both models of ``pair`` on ``device``, interleaved,
    in ``precision`` (``"float32"`` or ``"amp"``: see :func:`_worker`).

    ``checkpoints``: the folder of the FashionScenes pairs' trained weights
    (:func:`checkpoint_for`), or None (or '') to start them from random init; COCO-size pairs
    always start from random init.

    Raises:
        FileNotFoundError: if ``checkpoints`` names a folder that lacks the weights of one of the
            pair's FashionScenes configs (timing random weights instead would measure other work).
        RuntimeError: if a worker process fails.

    Returns:
        dict with the pair's names, configs, batch, input size, weights and, per model
        (``"baseline"``, ``"libra"``): median ``train_s`` (s/step), ``infer_s`` (s/image),
        ``train_peak_mib``, ``infer_peak_mib``, ``rss_idle_mib`` and the raw times; plus the
        ``ratio`` Libra / baseline of each median and peak.
    """
    import multiprocessing

    missing = missing_checkpoints(pair, checkpoints) if checkpoints else []
    if missing:
        raise FileNotFoundError(f"no trained weights for {', '.join(missing)} in {checkpoints}")
    batch = make_batch(pair.baseline_config, pair.suite, batch_size, seed)
    batch_bytes = pickle.dumps(batch)
    configs = {"baseline": pair.baseline_config, "libra": pair.libra_config}
    weights = {k: checkpoint_for(c, checkpoints) if pair.suite == "FashionScenes" else None for k, c in configs.items()}
    ctx = multiprocessing.get_context("spawn")
    workers: Dict[str, _Worker] = {}
    share_dir = tempfile.TemporaryDirectory(prefix="libra_bench_")
    shared_state = os.path.join(share_dir.name, "baseline.pth")
    try:
        for key, config_file in configs.items():  # the baseline first: the Libra model loads its weights
            shared = (("save" if key == "baseline" else "load"), shared_state)
            workers[key] = _Worker(
                ctx, config_file, weights[key], device, batch_bytes, seed, threads, precision, shared
            )
        result = {
            "suite": pair.suite,
            "device": device,
            "precision": precision,
            "baseline_name": pair.baseline_name,
            "libra_name": pair.libra_name,
            "configs": configs,
            "weights": {k: (os.path.relpath(w, REPO) if w else "random init") for k, w in weights.items()},
            "batch_size": batch_size,
            "input_hw": list(batch[0]["image"].shape[1:]),
            "models": {k: dict(w.info) for k, w in workers.items()},
        }
        measure_phases(workers, result["models"], {"infer": (infer_warmup, infer_repeats),
                                                   "train": (train_warmup, train_repeats)},
                       lambda phase: log(f"  {pair.suite} {pair.baseline_name} vs {pair.libra_name} on {device}, "
                                         f"{precision}, batch {batch_size}: {phase} ..."))  # fmt: skip
        result["ratio"] = ratios(result["models"]["libra"], result["models"]["baseline"],
                                 ("train_s", "infer_s", "train_peak_mib", "infer_peak_mib"))  # fmt: skip
        result["paired_ratios"] = paired_ratios(result["models"]["libra"], result["models"]["baseline"])
        return result
    finally:
        for w in workers.values():
            w.close()
        share_dir.cleanup()
