"""Where training stands, saved in each checkpoint, so that a resumed run computes what an
uninterrupted one would have: the data position, the random generators and the logged curves.

- **Data.** With :class:`libra_rcnn.data.exact_order.ExactOrderLoader` (the trainers' default),
  iteration ``i``'s batch is batch ``i`` of a plan fixed by the data seed; the checkpoint holds
  the seed, and a resume starts the loader at the resumed iteration's batch.
- **Random generators.** Before each iteration, torch's (CPU and every CUDA device), NumPy's and
  Python's generators are seeded from (seed, rank, iteration), and so is any ``torch.Generator``
  a module holds as ``sampling_generator`` (:class:`libra_rcnn.modeling.LibraROIHeads`). What the
  step draws (the RPN's and the RoI sampler's draws) is then a function of the iteration, not of
  how many iterations this process has run; nothing has to be saved for it but the seed.
- **Curves.** The last values of every scalar go into the checkpoint and back into the event
  storage on resume, so that the medians Detectron2's writers log are those of an uninterrupted
  run; TensorBoard drops the steps past the checkpoint (:class:`TensorboardFromStart`).

docs/reports/distributed.md#how-a-resumed-run-finds-its-place.
"""
import logging
import random
from typing import List, Optional

import numpy as np
import torch
from detectron2.engine import HookBase, default_writers
from detectron2.utils import comm
from detectron2.utils.events import EventWriter, HistoryBuffer, TensorboardXWriter

from ..data.exact_order import STEP, ExactOrderLoader, derive_seed

__all__ = ["TrainingPosition", "TensorboardFromStart", "resumable_writers"]

logger = logging.getLogger("libra_rcnn")

# Values of each scalar kept in a checkpoint: Detectron2's writers take medians over 20.
KEPT_SCALARS = 20


class TrainingPosition(HookBase):
    """Saves the training position with each checkpoint and restores it on resume (see the
    module's docstring). Register it on every process, first among the hooks.

    Its ``state_dict`` (in the checkpoint's ``trainer/hooks/TrainingPosition``):

    - ``seed``: the run's seed (the data loader's);
    - ``world_size``, ``batch_size``, ``dataset_size``: what the plan of batches depends on;
    - ``origin``, ``origin_iter``: the plan's first global sample position, and the iteration
      that took its first batch (0 and 0, unless the world size changed at a resume);
    - ``scalars``: the last :data:`KEPT_SCALARS` (value, iteration) of every scalar.

    A checkpoint without this state (written by an older version) still resumes: the log says
    that the data position is unknown and the data order restarts from its first batch. A
    resume with another world size, batch size or dataset continues the same order of samples
    from global sample (iterations done x total batch), in batches that differ from an
    uninterrupted run's; the log says so. With aspect-ratio grouping, the images that waited in
    half-filled buckets at the checkpoint are skipped, and as many taken early are seen twice
    (at most ``batch_size - 1`` of each orientation per process).
    """

    def __init__(self):
        self.seed: Optional[int] = None
        self.origin, self.origin_iter = 0, 0
        self._loaded: Optional[dict] = None
        self._generators: List[torch.Generator] = []

    def _loader(self) -> Optional[ExactOrderLoader]:
        loader = getattr(self.trainer, "data_loader", None)
        return loader if isinstance(loader, ExactOrderLoader) else None

    def state_dict(self) -> dict:
        loader = self._loader()
        state = {"seed": self.seed, "origin": self.origin, "origin_iter": self.origin_iter}
        if loader is not None:
            state.update(world_size=loader.world_size, batch_size=loader.batch_size, dataset_size=len(loader.groups))
        storage = getattr(self.trainer, "storage", None)
        if storage is not None:
            state["scalars"] = {name: history.values()[-KEPT_SCALARS:] for name, history in storage.histories().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state

    def before_train(self) -> None:
        start, loader, state = self.trainer.start_iter, self._loader(), self._loaded
        model = self.trainer.model
        self._generators = [m.sampling_generator for m in model.modules()
                            if isinstance(getattr(m, "sampling_generator", None), torch.Generator)]  # fmt: skip
        if loader is None:
            logger.warning("The training data loader is %s, not an ExactOrderLoader: a resumed run's data "
                           "order and augmentations differ from an uninterrupted run's", type(self.trainer.data_loader).__name__)  # fmt: skip
        if start == 0 or state is None or state.get("seed") is None:
            if start > 0:
                logger.warning("The checkpoint of iteration %d holds no training position (written by an older "
                               "version): the data order restarts from its first batch", start - 1)  # fmt: skip
            self.seed = loader.seed if loader is not None else comm.shared_random_seed()
            self.origin, self.origin_iter = 0, start
            if loader is not None:
                loader.start_at(0)
            return
        self.seed = state["seed"]
        self.origin, self.origin_iter = state["origin"], state["origin_iter"]
        if loader is not None:
            now = (loader.world_size, loader.batch_size, len(loader.groups))
            then = (state.get("world_size"), state.get("batch_size"), state.get("dataset_size"))
            if None in then:  # a checkpoint of a run whose loader was not an ExactOrderLoader
                self.origin, self.origin_iter = 0, start
                loader.start_at(0, self.seed)
                logger.warning("The checkpoint of iteration %d holds no data position: the data order restarts "
                               "from its first batch", start - 1)  # fmt: skip
            elif now == then:
                loader.start_at(start - self.origin_iter, self.seed, self.origin)
                logger.info("Resuming the data at batch %d of seed %d (global sample %d)", start - self.origin_iter,
                            self.seed, self.origin + (start - self.origin_iter) * now[0] * now[1])  # fmt: skip
            else:
                taken = self.origin + (start - self.origin_iter) * then[0] * then[1]
                self.origin, self.origin_iter = taken, start
                loader.start_at(0, self.seed, taken)
                logger.warning("(world size, batch per process, images) changed from %s to %s at the resume: the "
                               "order of samples continues at global sample %d, in other batches than an "
                               "uninterrupted run's", then, now, taken)  # fmt: skip
        histories = self.trainer.storage.histories()
        for name, values in state.get("scalars", {}).items():
            history = histories.setdefault(name, HistoryBuffer())
            for value, iteration in values:
                history.update(value, iteration)

    def before_step(self) -> None:
        seed = derive_seed(self.seed, STEP, comm.get_rank(), self.trainer.iter)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        for i, generator in enumerate(self._generators):
            generator.manual_seed(derive_seed(self.seed, STEP, comm.get_rank(), self.trainer.iter, i + 1))


class TensorboardFromStart(EventWriter):
    """Detectron2's ``TensorboardXWriter``, opened at its first write with ``purge_step`` set to
    the trainer's first iteration when it resumed: TensorBoard then hides the events that the
    interrupted run wrote at and past that step, so that no step appears twice.

    Args:
        log_dir: the event files' folder (``OUTPUT_DIR``).
        trainer: the trainer (its ``start_iter`` is read at the first write).
        window_size: median window of smoothed scalars (Detectron2's: 20).
    """

    def __init__(self, log_dir: str, trainer, window_size: int = 20):
        self._log_dir, self._trainer, self._window_size = log_dir, trainer, window_size
        self._writer: Optional[TensorboardXWriter] = None

    def write(self) -> None:
        if self._writer is None:
            start = self._trainer.start_iter
            extra = {"purge_step": start} if start > 0 else {}
            self._writer = TensorboardXWriter(self._log_dir, self._window_size, **extra)
        self._writer.write()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def resumable_writers(output_dir: str, max_iter: int, trainer) -> List[EventWriter]:
    """Detectron2's ``default_writers`` (the console, ``metrics.json``, TensorBoard), its
    TensorBoard writer replaced by :class:`TensorboardFromStart`, which cuts the events back at a
    resume. (Detectron2's writer opens its event file at its first write only, so the one
    replaced never writes.)"""
    return [TensorboardFromStart(output_dir, trainer) if isinstance(writer, TensorboardXWriter) else writer
            for writer in default_writers(output_dir, max_iter)]  # fmt: skip
