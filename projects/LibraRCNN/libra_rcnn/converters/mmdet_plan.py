"""The plan of a converted model's Detectron2 config, and the helpers its parts share.

:class:`ConfigPlan` collects Detectron2 keys, each with the mmdetection key it came from;
:class:`MmdetConfig` reads an mmdetection config by dotted keys. The parts that fill a plan
are :mod:`.mmdet_body` (input, backbone, neck) and :mod:`.mmdet_heads` (RPN, RoI and RetinaNet
heads, classes); :func:`libra_rcnn.converters.mmdet_settings.detectron2_settings` runs them.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ConversionError
from .mmdet_config_text import Unreadable

__all__ = ["ConfigPlan", "MmdetConfig", "d2_norm", "norm_type", "LEVELS", "STAGES", "set_or_assume", "test_cfg",
           "coder_weights", "nms_threshold"]  # fmt: skip


@dataclass
class ConfigPlan:
    """Detectron2 keys for a converted checkpoint.

    Attributes:
        settings: ``(key, value, source)``: the Detectron2 key, its value, and where the value
            came from (an mmdetection config key, ``weights: <key>``, or ``assumed``).
        assumptions: one line per value that neither the weights nor a config determined.
        not_carried: training-only mmdetection settings that the config does not reproduce.
        num_ratios, num_scales: anchors per location of the anchor head (for the channel order).
        levels: the FPN levels, finest first (``["p2", ..., "p6"]``).
    """

    settings: List[Tuple[str, Any, str]] = field(default_factory=list)
    assumptions: List[str] = field(default_factory=list)
    not_carried: List[str] = field(default_factory=list)
    num_ratios: int = 3
    num_scales: int = 1
    levels: List[str] = field(default_factory=list)

    def set(self, key: str, value: Any, source: str) -> None:
        self.settings = [s for s in self.settings if s[0] != key]
        self.settings.append((key, value, source))

    def assume(self, key: str, value: Any, reason: str) -> None:
        self.set(key, value, "assumed")
        self.assumptions.append(f"{key} = {value!r} ({reason})")

    def value(self, key: str) -> Any:
        for k, v, _ in self.settings:
            if k == key:
                return v
        raise KeyError(key)


class MmdetConfig:
    """An mmdetection config dict, read by dotted keys; ``None`` when there is no config."""

    def __init__(self, variables: Optional[Dict[str, Any]]):
        self.variables = variables

    def __bool__(self) -> bool:
        return self.variables is not None

    def get(self, key: str, default: Any = None) -> Any:
        """The value at the dotted ``key`` (list items by index), or ``default``.

        Raises:
            ConversionError: when the value is a variable the config reader could not read
                literally (:class:`~libra_rcnn.converters.mmdet_config_text.Unreadable`).
        """
        node: Any = self.variables
        for part in key.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return default
            if isinstance(node, Unreadable):
                raise ConversionError(f"{key}: {node.reason}")
        return node


def norm_type(cfg: Optional[dict]) -> Optional[str]:
    return None if not cfg else str(cfg.get("type"))


# Detectron2's GroupNorm (detectron2.layers.get_norm) has 32 groups.
D2_GN_GROUPS = 32


def d2_norm(key: str, norm_cfg: Optional[dict], abbr: Optional[str], *, backbone: bool, plan: ConfigPlan) -> str:
    """Detectron2's NORM for an mmdetection ``norm_cfg`` (or, without a config, for the weights'
    norm layer abbreviation ``bn`` / ``gn`` / None)."""
    if norm_cfg is None and abbr is None:
        return ""
    kind = norm_type(norm_cfg) if norm_cfg else {"bn": "BN", "gn": "GN"}[abbr]
    if kind == "GN":
        groups = norm_cfg.get("num_groups") if norm_cfg else None
        if norm_cfg is None:
            plan.assumptions.append(f"{key}: GroupNorm with {D2_GN_GROUPS} groups (not stored in the weights)")
        elif groups != D2_GN_GROUPS:
            raise ConversionError(f"{key}.num_groups = {groups}: Detectron2's GroupNorm has {D2_GN_GROUPS} groups")
        return "GN"
    if kind in ("BN", "SyncBN", "BN2d", "MMSyncBN", "NaiveSyncBN"):
        if backbone:
            frozen = norm_cfg is None or norm_cfg.get("requires_grad") is False
            if norm_cfg is None:
                plan.assumptions.append(f"{key}: batch norm frozen (mmdetection's norm_eval=True)")
            return "FrozenBN" if frozen else ("SyncBN" if "Sync" in kind else "BN")
        return "SyncBN" if "Sync" in kind else "BN"
    raise ConversionError(f"{key}.type = {kind!r}: Detectron2 mirrors BN, SyncBN and GN (32 groups) only")


LEVELS = {4: "p2", 8: "p3", 16: "p4", 32: "p5", 64: "p6", 128: "p7"}


STAGES = ("res2", "res3", "res4", "res5")


def set_or_assume(plan: ConfigPlan, key: str, value: Any, source: str, default: Any, reason: str) -> None:
    if value is None:
        plan.assume(key, default, reason)
    else:
        plan.set(key, value, source)


def test_cfg(cfg: MmdetConfig, model: str, part: str) -> Tuple[dict, str]:
    """``(test_cfg[.part], its key)``, inside the model (mmdetection 2.x/3.x) or at the top; ``({}, "")``."""
    for key in (f"{model}test_cfg.{part}" if part else f"{model}test_cfg", f"test_cfg.{part}" if part else "test_cfg"):
        value = cfg.get(key)
        if isinstance(value, dict):
            return value, key
    return {}, ""


def coder_weights(coder: Optional[dict], key: str, default: Sequence[float]) -> Tuple[List[float], Optional[str]]:
    if not coder:
        return [1.0 / s for s in default], None
    if coder.get("type", "DeltaXYWHBBoxCoder") not in ("DeltaXYWHBBoxCoder", "mmdet.DeltaXYWHBBoxCoder"):
        raise ConversionError(f"{key}.bbox_coder.type = {coder.get('type')!r}: Detectron2 has DeltaXYWHBBoxCoder's deltas")
    if any(float(m) != 0.0 for m in coder.get("target_means", [0.0] * 4)):
        raise ConversionError(f"{key}.bbox_coder.target_means = {coder['target_means']}: Detectron2's deltas have mean 0")
    stds = [float(s) for s in coder.get("target_stds", default)]
    return [1.0 / s for s in stds], f"{key}.bbox_coder.target_stds"


def nms_threshold(nms: Optional[dict], key: str) -> Optional[float]:
    if not nms:
        return None
    if nms.get("type", "nms") != "nms":
        raise ConversionError(f"{key}.type = {nms['type']!r}: Detectron2 tests with plain NMS")
    return float(nms.get("iou_threshold", nms.get("iou_thr", 0.5)))
