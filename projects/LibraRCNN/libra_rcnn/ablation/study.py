"""A study of one's own config: the rows of Libra R-CNN's Table 2 (or Libra RetinaNet's, or a sweep of
one key), derived from the config, each one switch away from the row above; and a verdict per row.

    python -m libra_rcnn.ablation --study table2 --config-file my_data.yaml --seeds 7 8 9 --out runs/my_study

Every row is the user's config (their data, classes and schedule) with the overrides of
:func:`study_rows`; the runner trains each once per seed and tabulates them
(:mod:`libra_rcnn.ablation.runner`). After the table, :func:`verdicts` says per component whether it
helps, hurts, or makes no difference beyond noise at these seeds, and how large a step these seeds
could have found (:func:`detectable_difference`).
"""
import math
from typing import List, Sequence, Tuple

from detectron2.config import CfgNode
from scipy import stats

from ..config import InputError
from .stats import critical_t

__all__ = ["STUDIES", "study_rows", "verdicts", "detectable_difference"]

STUDIES = ("table2", "libra_retinanet", "sweep")
BFP = "build_bfp_backbone"
RETINANET_FAMILY = ("RetinaNet", "LibraRetinaNet")
# (row name, component it adds) of each study, in order.
COMPONENTS = {
    "table2": [("a_baseline", "the baseline"), ("b_iou_sampling", "IoU-balanced sampling"),
               ("c_bfp", "the balanced feature pyramid"), ("d_balanced_l1", "the balanced L1 loss"),
               ("e_rpn_bound", "the authors' RPN sampling")],
    "libra_retinanet": [("a_retinanet", "the RetinaNet baseline"), ("b_bfp", "the balanced feature pyramid"),
                        ("c_balanced_l1", "the balanced L1 loss")],
}  # fmt: skip


def _fpn_builder(cfg: CfgNode) -> str:
    """The FPN under the config's backbone: the one the BFP wraps, or the backbone itself."""
    return cfg.MODEL.LIBRA.BFP.FPN_BACKBONE if cfg.MODEL.BACKBONE.NAME == BFP else cfg.MODEL.BACKBONE.NAME


def _table2(cfg: CfgNode) -> List[Tuple[str, str, List[str]]]:
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise InputError(
            f"--study table2 derives Faster R-CNN rows and MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE!r}; --study libra_retinanet takes a RetinaNet family config"
        )
    loss = cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE
    baseline_loss = "smooth_l1" if loss == "balanced_l1" else loss  # with the config's SMOOTH_L1_BETA
    bound = cfg.MODEL.LIBRA.RPN.NEG_POS_UB if cfg.MODEL.LIBRA.RPN.NEG_POS_UB >= 0 else 5.0
    a = ["MODEL.BACKBONE.NAME", _fpn_builder(cfg), "MODEL.LIBRA.BFP.FPN_BACKBONE", _fpn_builder(cfg),
         "MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", baseline_loss,
         "MODEL.PROPOSAL_GENERATOR.NAME", "RPN", "MODEL.LIBRA.RPN.NEG_POS_UB", "-1.0"]  # fmt: skip
    b = a + ["MODEL.ROI_HEADS.NAME", "LibraROIHeads"]
    c = b + ["MODEL.BACKBONE.NAME", BFP]
    d = c + ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1"]
    e = d + ["MODEL.PROPOSAL_GENERATOR.NAME", "LibraRPN", "MODEL.LIBRA.RPN.NEG_POS_UB", str(float(bound))]
    return [(name, what, opts) for (name, what), opts in zip(COMPONENTS["table2"], (a, b, c, d, e))]


def _libra_retinanet(cfg: CfgNode) -> List[Tuple[str, str, List[str]]]:
    if cfg.MODEL.META_ARCHITECTURE not in RETINANET_FAMILY:
        raise InputError(
            f"--study libra_retinanet derives RetinaNet rows and MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE!r}; --study table2 takes a Faster R-CNN family config"
        )
    loss = cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE
    a = ["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.BACKBONE.NAME", _fpn_builder(cfg),
         "MODEL.LIBRA.BFP.FPN_BACKBONE", _fpn_builder(cfg),
         "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "smooth_l1" if loss == "balanced_l1" else loss]  # fmt: skip
    b = a + ["MODEL.BACKBONE.NAME", BFP]
    c = b + ["MODEL.META_ARCHITECTURE", "LibraRetinaNet", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "balanced_l1"]
    return [(name, what, opts) for (name, what), opts in zip(COMPONENTS["libra_retinanet"], (a, b, c))]


def study_rows(study: str, cfg: CfgNode, sweep: Sequence[str] = ()) -> List[Tuple[str, str, List[str]]]:
    """The rows of a study of the config ``cfg``: ``(name, what the row adds, KEY VALUE overrides)``.

    - ``table2``: the baseline (the config's FPN, Detectron2's RoI heads, RPN and box loss; smooth L1
      with the config's beta where it has balanced L1), then IoU-balanced sampling, the BFP, the
      balanced L1 loss and the authors' RPN sampling (the config's bound, else 5), one at a time;
    - ``libra_retinanet``: RetinaNet, then the BFP, then the balanced L1 loss;
    - ``sweep``: ``sweep = [KEY, V1, V2, ...]``, one row per value.

    Raises:
        InputError: for a study that does not fit the config's model, or a bad sweep.
    """
    if study == "table2":
        return _table2(cfg)
    if study == "libra_retinanet":
        return _libra_retinanet(cfg)
    if len(sweep) < 3:
        raise InputError("--study sweep needs --sweep KEY V1 V2 [...]: a config key and at least two values")
    key, values = sweep[0], list(sweep[1:])
    if len(set(values)) != len(values):
        raise InputError(f"--sweep {key}: a value is given twice")
    return [(f"{key.split('.')[-1].lower()}_{value}", f"{key} {value}", [key, value]) for value in values]


def detectable_difference(std: float, n: int, power: float = 0.8) -> float:
    """The smallest true mean difference that a two-sided paired t-test at 5 % over ``n`` seeds
    finds with probability ``power``, when the per-seed differences spread with sample std ``std``
    (noncentral t; NaN for n < 2)."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    df, t = n - 1, critical_t(n - 1)
    lo, hi = 0.0, 50.0
    for _ in range(60):  # bisection on the noncentrality: power grows with it
        mid = (lo + hi) / 2
        reached = stats.nct.sf(t, df, mid) + stats.nct.cdf(-t, df, mid)
        lo, hi = (mid, hi) if reached < power else (lo, mid)
    return hi * std / math.sqrt(n)


def verdicts(summary: Sequence[dict], components: Sequence[str]) -> List[str]:
    """One line per row after the first: what its component does to AP at these seeds.

    Args:
        summary: :func:`libra_rcnn.ablation.stats.summarize`'s rows, in table order.
        components: what each row adds (the first row's is the reference).
    """
    lines = []
    for row, what in zip(summary[1:], components[1:]):
        step = row["step_AP"]
        seeds = ", ".join(map(str, row["seeds"]))
        change = f"{step['mean']:+.1f}" + ("" if math.isnan(step["std"]) else f" ± {step['std']:.1f}") + " AP"
        if step["beyond_noise"] is None:
            lines.append(f"{what}: {change} at seed {seeds}; one seed tells no effect from noise")
            continue
        if step["beyond_noise"]:
            verdict = "helps" if step["mean"] > 0 else "hurts"
            lines.append(f"{what}: {verdict}, {change} (paired t-test at 5 %, seeds {seeds})")
        else:
            reach = detectable_difference(step["std"], step["n"])
            power = f"; these seeds would find a step of {reach:.1f} AP 4 times in 5" if reach > 0 else ""
            lines.append(f"{what}: no difference beyond noise at seeds {seeds} ({change}){power}")
    return lines
