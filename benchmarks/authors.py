"""Libra R-CNN R-50 at COCO size: ours against mmdetection 3.3's own implementation, same weights.

The authors' Libra R-CNN lives in mmdetection (``configs/libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco.py``,
bundled with the package that ``benchmarks/setup_reference_env.sh`` installs). Both models run
the same weights on the same image, so that they do the same work:

1. an mmdetection worker builds that config's model with mmdetection's own initialisation
   (no download: the ResNet starts from random weights), sets its frozen BatchNorm statistics to
   its input's on the image (as :func:`benchmarks.detectors.calibrate_frozen_batchnorm` does
   for ours) and saves it as mmengine's runner does;
2. ``python -m libra_rcnn.convert_mmdet`` converts the checkpoint, and our worker loads it into
   ``configs/COCO-Detection/mmdet/libra-faster-rcnn_r50_fpn_1x_coco.yaml``, our config that
   mirrors mmdetection's (tests/test_mmdet_parity.py checks the two compute the same);
3. the workers alternate as the detector pairs do (:func:`benchmarks.detectors._alternate`):
   inference of one image under ``no_grad`` (mmdetection's ``test_step``, ours as Detectron2's
   ``inference_on_dataset`` calls the model), then training steps (mmdetection's ``train_step``
   with an SGD ``OptimWrapper``, ours Detectron2's ``SimpleTrainer.run_step``), learning rate 0.

The detections of the last inference of each are compared, so that the report shows the two
did the same work: the same number of boxes, and the largest box difference in pixels.
"""
import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, Optional

import torch

from .common import peak_mib, reset_peak, rss_mib, timed
from .detectors import (
    COCO_SIZE, _Worker, load_config, make_batch, measure_phases, paired_ratios, ratios, set_to_input_statistics
)

REPO = Path(__file__).resolve().parents[1]
MMDET_CONFIG = "libra_rcnn/libra-faster-rcnn_r50_fpn_1x_coco"
OUR_CONFIG = "configs/COCO-Detection/mmdet/libra-faster-rcnn_r50_fpn_1x_coco.yaml"


def _mmdet_inputs(batch, image_format: str):
    """mmdetection's ``(data, data_for_test)`` of Detectron2's mapped ``batch``: BGR uint8 images
    (flipped from ``image_format`` "RGB"), GT boxes and labels; no rescaling (scale factor 1)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    inputs, train_samples, test_samples = [], [], []
    for i, d in enumerate(batch):
        image = d["image"].flip(0) if image_format == "RGB" else d["image"]
        h, w = image.shape[1:]
        meta = dict(img_id=i, img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = InstanceData(
            bboxes=d["instances"].gt_boxes.tensor.clone(), labels=d["instances"].gt_classes.clone()
        )
        inputs.append(image.contiguous())
        train_samples.append(sample)
        test_samples.append(DetDataSample(metainfo=meta))
    return {"inputs": inputs, "data_samples": train_samples}, {"inputs": inputs[:1], "data_samples": test_samples[:1]}


def _calibrate_batchnorm(model, data) -> int:
    """Every frozen BatchNorm of mmdetection's backbone set to its input's statistics on ``data``."""
    layers = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    return set_to_input_statistics(layers, lambda: model.backbone(model.data_preprocessor(data, False)["inputs"]))


def _mmdet_worker(conn, checkpoint: str, batch_bytes: bytes, image_format: str, seed: int, threads: int) -> None:
    """Worker process: mmdetection's Libra R-CNN R-50; writes ``checkpoint``, then answers
    the same commands as :func:`benchmarks.detectors._worker`."""
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        from .reference.env import use_reference_env

        use_reference_env()
        import mmdet
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        from mmengine.optim import OptimWrapper
        from mmengine.runner.checkpoint import save_checkpoint

        register_all_modules()
        cfg = Config.fromfile(str(Path(mmdet.__file__).parent / ".mim" / "configs" / f"{MMDET_CONFIG}.py"))
        cfg.model.backbone.init_cfg = None  # no ImageNet download
        cfg.model.roi_head.bbox_roi_extractor.roi_layer.use_torchvision = True  # mmcv-lite has no compiled ops
        model = MODELS.build(cfg.model)
        model.init_weights()
        data, test_data = _mmdet_inputs(pickle.loads(batch_bytes), image_format)
        calibrated = _calibrate_batchnorm(model, data)
        save_checkpoint({"meta": {"mmdet_version": mmdet.__version__, "cfg": cfg.pretty_text},
                         "state_dict": model.state_dict()}, checkpoint)  # fmt: skip
        optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4))
        state = {}

        def train_step():
            model.train()
            model.train_step(data, optim_wrapper)

        def infer():
            model.eval()
            with torch.no_grad():
                state["last"] = model.test_step(test_data)[0].pred_instances

        conn.send(("ready", {"rss_idle_mib": rss_mib(), "parameters": sum(p.numel() for p in model.parameters()),
                             "calibrated_frozen_bn": calibrated, "mmdet": mmdet.__version__}))  # fmt: skip
        while True:
            command, arg = conn.recv()
            if command == "phase":
                reset_peak("cpu")
                conn.send(("ok", None))
            elif command == "train":
                conn.send(("ok", timed(train_step, "cpu")))
            elif command == "infer":
                conn.send(("ok", timed(infer, "cpu")))
            elif command == "peak":
                conn.send(("ok", peak_mib("cpu")))
            elif command == "detections":
                last = state["last"]
                conn.send(("ok", (last.bboxes, last.scores, last.labels)))
            else:
                conn.send(("ok", None))
                return
    except Exception:  # reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))


def same_detections(ours, theirs) -> dict:
    """How far two detectors' last detections are apart: counts, and for equal counts the largest
    box difference (pixels) and score difference after sorting both by score."""
    (b1, s1, c1), (b2, s2, c2) = ours, theirs
    result = {"ours": int(len(s1)), "theirs": int(len(s2))}
    if len(s1) == len(s2) and len(s1):
        o1, o2 = s1.argsort(descending=True), s2.argsort(descending=True)
        result["max_box_diff_px"] = float((b1[o1] - b2[o2]).abs().max())
        result["max_score_diff"] = float((s1[o1] - s2[o2]).abs().max())
        result["same_classes"] = bool(torch.equal(c1[o1].long(), c2[o2].long()))
    return result


def measure_authors(
    train_warmup: int, train_repeats: int, infer_warmup: int, infer_repeats: int, seed: int, threads: int, log=print
) -> dict:
    """Training step and inference of our Libra R-CNN R-50 against mmdetection's, same weights, CPU,
    one 800 x 1333 image per step.

    Raises:
        RuntimeError: if a worker fails, or the converter does.

    Returns:
        dict with per model (``"ours"``, ``"mmdetection"``) the median ``train_s`` and ``infer_s``,
        their raw times and peaks, the ``ratio`` ours / mmdetection's of each, and ``detections``
        (:func:`same_detections`).
    """
    import multiprocessing

    image_format = load_config(OUR_CONFIG, "cpu").INPUT.FORMAT
    batch = make_batch(OUR_CONFIG, "COCO size", 1, seed)
    batch_bytes = pickle.dumps(batch)
    ctx = multiprocessing.get_context("spawn")
    workers: Dict[str, _Worker] = {}
    folder = tempfile.TemporaryDirectory(prefix="libra_authors_")
    theirs_file, ours_file = os.path.join(folder.name, "mmdet.pth"), os.path.join(folder.name, "ours.pth")
    try:
        workers["mmdetection"] = _Worker(ctx, theirs_file, batch_bytes, image_format, seed, threads,
                                         target=_mmdet_worker)  # fmt: skip
        convert = subprocess.run([sys.executable, "-m", "libra_rcnn.convert_mmdet", theirs_file, ours_file],
                                 capture_output=True, text=True)  # fmt: skip
        if convert.returncode:
            raise RuntimeError(f"converting mmdetection's checkpoint failed:\n{convert.stderr}")
        workers["ours"] = _Worker(ctx, OUR_CONFIG, ours_file, "cpu", batch_bytes, seed, threads)
        result = {
            "mmdet_config": MMDET_CONFIG,
            "our_config": OUR_CONFIG,
            "input_hw": list(COCO_SIZE),
            "batch_size": 1,
            "models": {k: dict(w.info) for k, w in workers.items()},
        }

        def progress(phase):
            log(f"  Libra R-CNN R-50, ours vs mmdetection's, 1 x {COCO_SIZE[0]}x{COCO_SIZE[1]}: {phase} ...")
            if phase == "train":  # inference is over: its last detections
                result["detections"] = same_detections(workers["ours"].ask("detections"),
                                                       workers["mmdetection"].ask("detections"))  # fmt: skip

        measure_phases(workers, result["models"], {"infer": (infer_warmup, infer_repeats),
                                                   "train": (train_warmup, train_repeats)}, progress)  # fmt: skip
        result["ratio"] = ratios(result["models"]["ours"], result["models"]["mmdetection"])
        result["paired_ratios"] = paired_ratios(result["models"]["ours"], result["models"]["mmdetection"])
        return result
    finally:
        for w in workers.values():
            w.close()
        folder.cleanup()


def available() -> Optional[str]:
    """None when mmdetection's environment is installed, else why it is not."""
    from .reference.env import REFERENCE_ENV

    if not (REFERENCE_ENV / "mmdet").is_dir():
        return f"mmdetection is not installed in {REFERENCE_ENV} (bash benchmarks/setup_reference_env.sh)"
    return None
