"""Reading an mmdetection checkpoint file: its weights, its meta, its config text and version.

Reads with ``torch.load(weights_only=True)``; files with other objects beside the weights
(mmengine's training state) are read by an unpickler that builds tensors and plain containers
only: nothing else from the file runs.
"""
import pickle
import re
import types
from typing import Dict, Optional, Tuple

import torch

from .errors import ConversionError

__all__ = ["load_mmdet_checkpoint", "config_text", "mmdet_version", "v1_message"]


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Opaque:
    """Stands in for any other class in a checkpoint's extra entries (optimizer state, logs)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _TolerantUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers; every other global becomes :class:`_Opaque`.

    mmengine's checkpoints hold objects of mmengine's own classes (message hub, history
    buffers) beside the weights; this reads the weights without mmengine and without running
    any other code from the file.
    """

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return _Opaque


_tolerant_pickle = types.ModuleType("_tolerant_pickle")
_tolerant_pickle.Unpickler = _TolerantUnpickler
_tolerant_pickle.load = lambda f, **kwargs: _TolerantUnpickler(f, **kwargs).load()


def load_mmdet_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The (state dict, meta) of an mmdetection checkpoint file.

    Reads with ``torch.load(weights_only=True)``; files with other objects beside the weights
    (mmengine's training state) are read by an unpickler that builds tensors and plain
    containers only.

    Raises:
        ConversionError: if the file holds no state dict of tensors, or was written by
            mmdetection 1.x (``meta["mmdet_version"]`` 0.x/1.x).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: expected a dict (an mmdetection checkpoint), got {type(ckpt).__name__}")
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: no state dict of tensors (neither the file nor its 'state_dict' entry)")
    version = str(meta.get("mmdet_version", ""))
    if re.match(r"^[01]\.", version):
        raise ConversionError(v1_message(path, f"meta['mmdet_version'] = {version!r}"))
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, meta


def v1_message(path: str, evidence: str) -> str:
    return (
        f"{path} was written by mmdetection 1.x ({evidence}). Its boxes use the +1 pixel convention "
        "and other anchors, which this converter does not reproduce; use the same model from "
        "mmdetection's v2.0 model zoo (docs/pretrained_mmdet.md lists the files), or upgrade it with "
        "mmdetection's tools/model_converters/upgrade_model_version.py first."
    )


def config_text(meta: dict) -> Tuple[Optional[str], Optional[str]]:
    """(config text, where) from a checkpoint's meta: mmengine's ``meta["cfg"]`` (mmdetection
    3.x) or mmcv's ``meta["config"]`` (2.x); (None, None) when it has neither."""
    for key in ("cfg", "config"):
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key], f'meta["{key}"]'
    return None, None


def mmdet_version(meta: dict) -> Optional[str]:
    """"mmdet X" (2.x meta) or "mmengine X" (mmengine appends a git hash to its version)."""
    for key, name in (("mmdet_version", "mmdet"), ("mmengine_version", "mmengine")):
        value = str(meta.get(key, ""))
        m = re.match(r"(\d+\.\d+\.\d+?)[0-9a-f]{7,}$", value) or re.match(r"(\d+(\.\d+)*)", value)
        if m:
            return f"{name} {m.group(1)}"
    return None
