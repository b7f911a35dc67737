"""The records of ablation runs: each run's settings and figures (``result.json``), read back from
the run's own Detectron2 files."""
import json
import os
import statistics
from typing import Dict, List

from detectron2.config import CfgNode

from ..io import atomic_open

__all__ = ["METRICS", "RESULT_FILE", "config_settings", "changed_settings", "collect_result", "write_json"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULT_FILE = "result.json"


def config_settings(cfg: CfgNode, prefix: str = "") -> Dict[str, object]:
    """Every leaf of ``cfg`` as ``{dotted key: value}``, values as JSON gives them back
    (tuples become lists), so that settings read from a ``result.json`` compare equal."""
    flat: Dict[str, object] = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            flat.update(config_settings(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return json.loads(json.dumps(flat))


def changed_settings(stored: Dict[str, object], current: Dict[str, object]) -> List[str]:
    """Keys whose value differs between a finished run and the config now. Keys that only one
    side has (added or removed by a newer version of the project) do not count, nor does
    ``OUTPUT_DIR``: a folder of finished runs may be moved or reached by another path."""
    shared = (stored.keys() & current.keys()) - {"OUTPUT_DIR"}
    return sorted(k for k in shared if stored[k] != current[k])


def collect_result(out_dir: str) -> dict:
    """Figures of one finished run from its Detectron2 ``metrics.json``.

    Records repeated by a resumed run are counted once (the last one of an iteration wins).

    Returns:
        dict with ``METRICS`` (box AP in %), ``s_per_iter``, ``peak_memory_mib`` and
        ``s_per_image`` (the final evaluation's inference time per image, which the trainer
        writes as ``inference/s_per_image``; NaN for runs without it).

    Raises:
        RuntimeError: when ``metrics.json`` holds no final box AP.
    """
    path = os.path.join(out_dir, "metrics.json")
    by_iter: Dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_iter.setdefault(record["iteration"], {}).update(record)
    records = [by_iter[i] for i in sorted(by_iter)]
    final = [r for r in records if "bbox/AP" in r]
    if not final:
        raise RuntimeError(f"{path} holds no bbox/AP: the final evaluation did not run")
    times = [r["time"] for r in records if "time" in r]
    memory = [r["peak_memory_mib"] for r in records if "peak_memory_mib" in r]
    result = {m: final[-1][f"bbox/{m}"] for m in METRICS}
    result["s_per_iter"] = statistics.median(times[1:] or times) if times else float("nan")
    result["peak_memory_mib"] = max(memory) if memory else float("nan")
    inference = [r["inference/s_per_image"] for r in final if "inference/s_per_image" in r]
    result["s_per_image"] = inference[-1] if inference else float("nan")
    return result


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically: a stopped runner never leaves half a record."""
    with atomic_open(path) as f:
        json.dump(data, f, indent=2)
