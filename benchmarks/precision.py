"""The project's components in float16 and bfloat16 against float64, measured on the CPU.

    .venv/bin/python -m benchmarks.precision [--out benchmarks/results/precision.json]

Mixed-precision training (Detectron2's ``AMPTrainer``, ``torch.autocast``) runs convolutions and
matrix products in a 16-bit type, so the features, logits and box deltas that reach the
project's components are 16-bit. For each component this measures the largest relative error
``max |x_low - x_64| / max |x_64|`` of its output (and gradients) when its inputs are 16-bit,
against float64 on the same (rounded) inputs: the error the component itself adds. The unit
roundoff of bfloat16 is 2^-8 = 3.9e-3 and of float16 2^-11 = 4.9e-4; a component that adds
more than a few units is unsafe and computes that part in float32 (as Detectron2 decodes boxes
in float32 under autocast).

- balanced L1 (both variants, beta 1 and 0.11): loss and gradient over tiny residuals,
  residuals at and around beta, and large ones;
- the non-local block at COCO's P4 size (50 x 84 positions, 256 channels), with weights that
  give attention logits of the size trained models have (std 10: the reference does not scale
  them by 1/sqrt(C)), under ``torch.autocast``;
- the BFP's integration and rescaling (refinement off), under ``torch.autocast``;
- the sampler's IoU bins of IoUs at and next to the bin edges, under ``torch.autocast``;
- FSAF's anchor-free losses (focal + IoU / GIoU) with 16-bit logits and distances.

tests/test_precision.py keeps the bounds.
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict

import torch

__all__ = ["relative_error", "balanced_l1_errors", "non_local_errors", "bfp_errors", "binning_mismatches",
           "fsaf_loss_errors", "measure_all"]  # fmt: skip

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def relative_error(low: torch.Tensor, reference: torch.Tensor) -> float:
    """max |low - reference| / max |reference| (both compared in float64)."""
    reference = reference.double()
    return float((low.double() - reference).abs().max() / reference.abs().max().clamp(min=1e-300))


def _residuals(beta: float) -> Dict[str, torch.Tensor]:
    """Residual classes, float64 (N, 4): tiny, at and next to beta, large."""
    g = torch.Generator().manual_seed(0)
    steps = torch.tensor([-1e-2, -1e-3, 0.0, 1e-3, 1e-2], dtype=torch.float64)
    return {
        "tiny (1e-4 to 1e-2)": torch.exp(torch.empty(64, 4, dtype=torch.float64).uniform_(math.log(1e-4), math.log(1e-2), generator=g)),
        "at and near beta (beta x (1 +- 1e-3, 1e-2))": (beta * (1 + steps)).repeat(4, 1).T.reshape(-1, 4),
        "large (10 to 100)": torch.empty(64, 4, dtype=torch.float64).uniform_(10, 100, generator=g),
    }  # fmt: skip


def balanced_l1_errors(dtype: torch.dtype) -> Dict[str, float]:
    """Largest relative error of balanced L1's loss and gradient with 16-bit predictions and
    targets, per variant, beta and residual class."""
    from libra_rcnn import balanced_l1_loss

    out = {}
    for variant in ("paper", "mmdet"):
        for beta in (1.0, 0.11):
            for name, residual in _residuals(beta).items():
                target = torch.linspace(-2, 2, residual.numel(), dtype=torch.float64).reshape(residual.shape)
                low_pred = (target + residual).to(dtype).requires_grad_()
                low_target = target.to(dtype)
                # The reference sees the same rounded inputs, in float64.
                ref_pred = low_pred.detach().double().requires_grad_()
                ref = balanced_l1_loss(ref_pred, low_target.double(), beta=beta, variant=variant)
                ref.sum().backward()
                low = balanced_l1_loss(low_pred, low_target, beta=beta, variant=variant)
                low.sum().backward()
                key = f"{variant}, beta {beta}, {name}"
                out[f"loss: {key}"] = relative_error(low.detach(), ref.detach())
                out[f"gradient: {key}"] = relative_error(low_pred.grad, ref_pred.grad)
    return out


def non_local_errors(dtype: torch.dtype, size=(50, 84), channels: int = 256, logit_std: float = 10.0) -> Dict[str, float]:
    """The non-local block under ``torch.autocast("cpu", dtype)`` vs float64."""
    from libra_rcnn import NonLocalBlock2d

    g = torch.Generator().manual_seed(1)
    block = NonLocalBlock2d(channels)
    x = torch.randn(1, channels, *size, generator=g)
    with torch.no_grad():
        # theta, phi ~ N(0, s^2) on unit inputs: q, k have variance C s^2 and the logits q.k
        # a standard deviation of C^1.5 s^2; s is chosen for logit_std.
        s = math.sqrt(logit_std / channels**1.5)
        for conv in (block.theta, block.phi):
            conv.weight.normal_(0, s, generator=g)
        for conv in (block.g, block.out):
            conv.weight.normal_(0, 1 / math.sqrt(channels), generator=g)
        q = block.theta(x).flatten(2)
        logits = q.transpose(1, 2) @ block.phi(x).flatten(2)
        reference = block.double()(x.double())
        block.float()
        with torch.autocast("cpu", dtype=dtype):
            low = block(x)
    return {"logit std": float(logits.std()), "output": relative_error(low, reference),
            "attention term (output - input)": relative_error(low - x, reference - x.double())}  # fmt: skip


def bfp_errors(dtype: torch.dtype, channels: int = 32) -> Dict[str, float]:
    """The BFP's integration and rescaling of 16-bit FPN levels (COCO sizes P2-P6 of
    800 x 1344), under ``torch.autocast``, vs float64 on the same rounded levels."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import Backbone

    from libra_rcnn import BalancedFeaturePyramid

    g = torch.Generator().manual_seed(2)
    levels = {f"p{i}": torch.randn(1, channels, 800 >> i, 1344 >> i, generator=g).to(dtype) for i in range(2, 7)}

    class Given(Backbone):
        def __init__(self, tensors):
            super().__init__()
            self.tensors = tensors

        def forward(self, x):
            return dict(self.tensors)

        def output_shape(self):
            return {k: ShapeSpec(channels=channels, stride=2 ** int(k[1:])) for k in self.tensors}

    with torch.no_grad():
        reference = BalancedFeaturePyramid(Given({k: v.double() for k, v in levels.items()}), 2, "none")(None)
        with torch.autocast("cpu", dtype=dtype):
            low = BalancedFeaturePyramid(Given(levels), 2, "none")(None)
    return {f"output {k}": relative_error(low[k], reference[k]) for k in levels}


def binning_mismatches(dtype: torch.dtype) -> Dict[str, int]:
    """IoU bins of IoUs at and next to the bin edges (K = 3 and 5, paper binning, threshold 0.5):
    the number of IoUs that land in another bin than float32's, (1) as the sampler computes them
    under ``torch.autocast`` from float32 IoUs, (2) if the IoUs were first rounded to ``dtype``."""
    from libra_rcnn.modeling.sampling import iou_bins

    out = {}
    for bins in (3, 5):
        edges = torch.arange(1, bins, dtype=torch.float64) * 0.5 / bins
        offsets = torch.tensor([-1e-3, -1e-5, -1e-7, 0.0, 1e-7, 1e-5, 1e-3], dtype=torch.float64)
        iou = (edges[:, None] + offsets).flatten().to(torch.float32)
        n = iou.numel()
        args = (torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.int64), 1, bins, 0.5, "paper", -1.0)

        def group(values):
            return iou_bins(args[0], values, *args[1:])[1]

        reference = group(iou)
        with torch.autocast("cpu", dtype=dtype):
            under_autocast = group(iou)
        rounded = group(iou.to(dtype))
        out[f"K={bins}: of {n} IoUs at and next to the edges, other bin under autocast"] = int((under_autocast != reference).sum())
        out[f"K={bins}: of {n} IoUs at and next to the edges, other bin when rounded to the 16-bit type first"] = int(
            (rounded != reference).sum())  # fmt: skip
    return out


def fsaf_loss_errors(dtype: torch.dtype) -> Dict[str, float]:
    """FSAF's anchor-free losses of a FashionScenes-sized batch with 16-bit logits and distances,
    vs float64 from the same rounded predictions."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_cfg
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    out = {}
    for loss_type in ("iou", "giou"):
        cfg = load_cfg("configs/FashionScenes/fsaf_R_18_FPN_GN.yaml",
                       ["MODEL.DEVICE", "cpu", "MODEL.LIBRA.FSAF.BOX_LOSS_TYPE", loss_type])  # fmt: skip
        model = build_model(cfg).train()
        g = torch.Generator().manual_seed(3)
        features = [torch.randn(2, 64, 32 >> i, 32 >> i, generator=g) for i in range(5)]
        logits = [torch.randn(2, 10, f.shape[2], f.shape[3], generator=g) - 2 for f in features]
        distances = [torch.rand(2, 4, f.shape[2], f.shape[3], generator=g) * 2 for f in features]
        gts = []
        for _ in range(2):
            xy = torch.rand(4, 2, generator=g) * 180
            inst = Instances((256, 256))
            inst.gt_boxes = Boxes(torch.cat([xy, xy + 20 + torch.rand(4, 2, generator=g) * 50], dim=1))
            inst.gt_classes = torch.randint(0, 10, (4,), generator=g)
            gts.append(inst)
        from detectron2.utils.events import EventStorage

        with EventStorage(), torch.no_grad():
            low_logits, low_dist = [x.to(dtype) for x in logits], [x.to(dtype) for x in distances]
            model.double()
            reference = model.anchor_free_losses([f.double() for f in features], [x.double() for x in low_logits],
                                                 [x.double() for x in low_dist], gts)  # fmt: skip
            model.float()
            low = model.anchor_free_losses(features, low_logits, low_dist, gts)
        for k in reference:
            out[f"{loss_type}: {k}"] = relative_error(low[k], reference[k])
    return out


def measure_all() -> Dict[str, Dict[str, Dict[str, float]]]:
    """dtype name -> component -> measurement -> value."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return {name: {"balanced L1": balanced_l1_errors(dt), "non-local block": non_local_errors(dt),
                   "BFP integration and rescaling": bfp_errors(dt), "IoU binning": binning_mismatches(dt),
                   "FSAF anchor-free losses": fsaf_loss_errors(dt)}
            for name, dt in DTYPES.items()}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--follow", type=int, default=0,
                        help="also train the FashionScenes Libra R-CNN this many iterations in float32 and "
                        "under bfloat16 autocast and compare the losses (needs datasets/fashion_scenes)")  # fmt: skip
    args = parser.parse_args(argv)
    result = measure_all()
    if args.follow:
        curves = follow_losses("configs/FashionScenes/libra_rcnn_R_18_FPN_GN.yaml", args.follow)
        ref, low = curves["float32"], curves["bfloat16"]
        gaps = [abs(a - b) / a for a, b in zip(ref, low)]
        result["bfloat16 training, Libra R-CNN FashionScenes"] = {
            "losses": curves, "largest relative gap": max(gaps), "mean relative gap": sum(gaps) / len(gaps),
            "mean loss of the last 10, float32": sum(ref[-10:]) / 10, "mean loss of the last 10, bfloat16": sum(low[-10:]) / 10}  # fmt: skip
    for dtype, components in result.items():
        print(f"== {dtype}")
        if "losses" in components:
            print("  " + ", ".join(f"{k} {v:.4g}" for k, v in components.items() if k != "losses"))
            continue
        for component, values in components.items():
            worst = max((v for k, v in values.items() if k != "logit std"), default=0)
            print(f"  {component}: worst {worst:.3g}")
            for k, v in values.items():
                print(f"      {v:10.3g}  {k}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0



# --- training steps under bfloat16 autocast ---------------------------------------------------


def autocast_step(model, batch, dtype=torch.bfloat16) -> Dict[str, float]:
    """One forward + backward of ``model`` on ``batch`` under ``torch.autocast("cpu", dtype)``;
    returns the losses, and raises ``FloatingPointError`` for a non-finite loss or gradient."""
    from detectron2.utils.events import EventStorage

    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        with torch.autocast("cpu", dtype=dtype):
            losses = model(list(batch))
        total = sum(losses.values())
        total.backward()
    values = {k: float(v) for k, v in losses.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"non-finite loss under autocast({dtype}): {values}")
    for name, p in model.named_parameters():
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            raise FloatingPointError(f"non-finite gradient of {name} under autocast({dtype})")
    return values


def follow_losses(config: str, steps: int = 50, dtype=torch.bfloat16, seed: int = 7) -> Dict[str, list]:
    """``steps`` SGD iterations of ``config`` on its training set, in float32 and under
    ``torch.autocast("cpu", dtype)``, from the same weights on the same batches: the total loss
    of each iteration, for each."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import load_cfg
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    cfg = load_cfg(config, ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"])
    curves = {}
    for name, low in (("float32", None), (str(dtype).replace("torch.", ""), dtype)):
        seed_all_rng(seed)
        model = build_model(cfg).train()
        optimizer = build_optimizer(cfg, model)
        scheduler = build_lr_scheduler(cfg, optimizer)
        loader = iter(build_detection_train_loader(cfg))
        losses = []
        with EventStorage(0) as storage:
            for it in range(steps):
                storage.iter = it
                batch = next(loader)
                with torch.autocast("cpu", dtype=low or torch.bfloat16, enabled=low is not None):
                    loss = sum(model(batch).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss))
        curves[name] = losses
    return curves


if __name__ == "__main__":
    sys.exit(main())
