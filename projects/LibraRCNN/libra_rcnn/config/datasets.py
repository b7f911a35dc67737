"""Datasets declared in the config: ``DATASETS.COCO_INSTANCES``, so that training on one's own COCO
export needs no code.

``DATASETS.COCO_INSTANCES`` is a list of ``[name, json_file, image_root]`` triples; each is
registered as Detectron2's ``register_coco_instances`` registers a dataset, under ``name``, which
``DATASETS.TRAIN`` and ``DATASETS.TEST`` then use. In a LazyConfig the same is the top-level
``coco_instances = dict(name=(json_file, image_root), ...)``.

Relative paths are resolved once, when the config is loaded, and written back absolute, so that
the ``config.yaml`` a run writes into its ``OUTPUT_DIR`` works from any working directory:

- in a config file, relative to the folder of the file given to ``--config-file`` (as Detectron2
  resolves ``_BASE_``);
- on the command line (``DATASETS.COCO_INSTANCES "[[...]]"``), relative to the working directory.

``OUTPUT_DIR`` is made absolute too, relative to the working directory, as Detectron2 reads it.
"""
import os
from typing import List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["absolute_instances", "register_instances"]

KEY = "DATASETS.COCO_INSTANCES"


def absolute_instances(entries: Sequence, base_dir: str, key: str = KEY) -> List[List[str]]:
    """``[name, json_file, image_root]`` triples with their relative paths joined to ``base_dir``.

    Raises:
        ValueError: for an entry that is not a triple of strings, naming ``key`` and the entry.
    """
    out = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(isinstance(v, str) and v for v in entry)):
            raise ValueError(f"{key}[{i}] = {entry!r} is not a [name, json_file, image_root] triple of strings")
        name, json_file, image_root = entry
        out.append([name, *(os.path.normpath(os.path.join(base_dir, os.path.expanduser(p))) for p in (json_file, image_root))])
    return out


def _registered_files(name: str) -> Tuple[str, str]:
    metadata = MetadataCatalog.get(name)
    return metadata.get("json_file"), metadata.get("image_root")


def register_instances(entries: Sequence, key: str = KEY) -> List[str]:
    """Register each ``[name, json_file, image_root]`` (absolute paths) with Detectron2's
    ``register_coco_instances``; a name already registered with the same files is kept.

    Returns:
        the names.

    Raises:
        ValueError: for a name registered with other files (Detectron2's built-in
            ``coco_2017_train``, for one), a missing annotation file or image folder, naming
            ``key``, the name and the path.
    """
    names = []
    for i, (name, json_file, image_root) in enumerate(entries):
        where = f"{key}[{i}] ({name!r})"
        if not os.path.isfile(json_file):
            raise ValueError(f"{where}: annotation file {json_file} not found")
        if not os.path.isdir(image_root):
            raise ValueError(f"{where}: image folder {image_root} not found")
        if name in DatasetCatalog.list():
            if _registered_files(name) != (json_file, image_root):
                theirs = ", ".join(str(p) for p in _registered_files(name) if p) or "other records"
                raise ValueError(f"{where}: the name is registered already, with {theirs}; choose another name")
        else:
            register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return names
