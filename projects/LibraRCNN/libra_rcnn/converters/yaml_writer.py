"""Writing a converted model's :class:`ConfigPlan` as a Detectron2 YAML config, each key with its source."""
import math
from typing import Any, Dict, Sequence

import yaml

from ..io import atomic_open
from .mmdet_plan import ConfigPlan

__all__ = ["write_config"]


def _yaml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(round(value, 10)) if math.isfinite(value) else str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def write_config(path: str, plan: ConfigPlan, header: Sequence[str]) -> None:
    """Write ``plan`` as a Detectron2 YAML config at ``path`` (atomically), each key with its source.

    The file starts with ``header`` and the assumptions as comments; ``VERSION: 2``.
    """
    tree: Dict[str, Any] = {}
    for key, value, source in plan.settings:
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = (value, source)
    lines = [f"# {h}" for h in header]
    if plan.assumptions:
        lines.append("# Assumed (neither the weights nor a config in the checkpoint say):")
        lines += [f"#   - {a}" for a in plan.assumptions]
    if plan.not_carried:
        lines.append("# Not carried over (training only):")
        lines += [f"#   - {a}" for a in plan.not_carried]

    def emit(node: Dict[str, Any], indent: int) -> None:
        for name, item in node.items():
            if isinstance(item, dict):
                lines.append("  " * indent + f"{name}:")
                emit(item, indent + 1)
            else:
                value, source = item
                comment = f"  # {source}" if source else ""
                lines.append("  " * indent + f"{name}: {_yaml_value(value)}{comment}")

    emit(tree, 0)
    lines.append("VERSION: 2")
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")
