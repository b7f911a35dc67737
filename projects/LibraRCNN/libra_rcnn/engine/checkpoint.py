"""Checkpoints that are never left half written.

fvcore's ``Checkpointer.save`` writes the ``.pth`` file and then the ``last_checkpoint`` tag
in place, so a process killed during either write leaves a truncated file behind, and
``--resume`` then fails on it. :class:`AtomicCheckpointer` routes both writes through
:class:`AtomicWrites` (:func:`libra_rcnn.io.atomic_open`): each goes to a temporary file in the
same folder, is flushed to disk, and only then replaces the target in one ``os.replace``. An interrupted save leaves the
previous checkpoint and its tag as they were.
"""
from detectron2.checkpoint import DetectionCheckpointer

from ..io import atomic_open

__all__ = ["AtomicWrites", "AtomicCheckpointer"]


class AtomicWrites:
    """A path manager whose ``open`` for writing a local file is atomic.

    Wraps an iopath ``PathManager`` (Detectron2's): ``open(path, "w"/"wb")`` on a local
    path returns a context manager that writes a temporary file beside ``path`` and renames
    it over ``path`` on a clean exit, or deletes it on an exception. Every other call,
    and any path with a ``scheme://``, goes to the wrapped manager unchanged.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        if mode in ("w", "wb") and "://" not in path and not kwargs:
            return atomic_open(path, mode)
        return self._path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._path_manager, name)


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's ``DetectionCheckpointer`` whose ``save`` is atomic (see :class:`AtomicWrites`).

    Saving, loading, resuming and Detectron2's ``PeriodicCheckpointer`` work as with the
    parent class; only the two writes of ``save`` (the ``.pth`` file and the
    ``last_checkpoint`` tag) become all-or-nothing.
    """

    def __init__(self, model, save_dir: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.path_manager = AtomicWrites(self.path_manager)
