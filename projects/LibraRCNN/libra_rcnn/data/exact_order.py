"""A training data loader whose every batch is a pure function of (seed, iteration): exact resume.

Detectron2's training loader (``build_detection_train_loader``) draws its order from a
generator that runs from the start of training, shards it over data-loader workers in chunks,
and groups images by aspect ratio in the order the workers deliver them; augmentations draw
from each worker's own random stream. None of it can be restored from a checkpoint, so a
resumed run sees other images, in another order, with other augmentations.

Here the same pieces are arranged so that nothing depends on the past of the process:

- **Order.** Global sample position ``p = 0, 1, 2, ...`` is image ``perm_e[p mod N]`` of epoch
  ``e = p // N``, where ``perm_e`` is a random permutation drawn from (seed, e) alone
  (:class:`BatchPlan`). Rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...``, as
  Detectron2's ``TrainingSampler`` does.
- **Aspect-ratio grouping.** As Detectron2's ``AspectRatioGroupedDataset``: the rank's images go
  into two buckets (width > height, or not) in stream order, and a bucket becomes a batch when
  it holds ``batch_size`` images. The buckets are filled from the records' ``width`` and
  ``height``, before any image is decoded, so batch ``k`` of a rank is known without loading
  the ``k`` batches before it: resuming at iteration 10,000 replays the grouping over the
  records' orientation only (benchmarks/resume_position.py measures it).
- **Augmentations.** Before the mapper (Detectron2's ``DatasetMapper``, unchanged) maps the
  sample at position ``p``, Python's ``random``, NumPy's global generator and torch's CPU
  generator are seeded from (seed, p), then restored. A sample gets the same augmentation in
  every run, whichever worker maps it and however many workers there are.
- **Workers.** Worker ``w`` of ``K`` maps batches ``w, w + K, ...``, and PyTorch's loader hands
  them out in turn, so the batches arrive in plan order for any ``DATALOADER.NUM_WORKERS``.

A run's batches therefore depend on the seed, the world size, the batch size and the records,
not on the number of workers, and :meth:`ExactOrderLoader.start_at` makes the next batch any
batch of the plan. :class:`libra_rcnn.engine.position.TrainingPosition` saves the seed in each
checkpoint and calls ``start_at`` on resume. docs/reports/distributed.md#how-a-resumed-run-finds-its-place.
"""
import itertools
import logging
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

__all__ = ["derive_seed", "BatchPlan", "ExactOrderLoader", "build_exact_train_loader"]

logger = logging.getLogger("libra_rcnn")

# What a derived seed is for: one stream per purpose, so that no two purposes share draws.
EPOCH, SAMPLE, STEP, SUBSTITUTE = 0, 1, 2, 3


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer ``keys`` (NumPy's ``SeedSequence``):
    different keys give independent streams; the same keys give the same seed on any machine."""
    words = np.random.SeedSequence([seed % 2**64, *keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class BatchPlan:
    """Which images make batch ``k`` of rank ``rank``: a pure function of the arguments and ``k``.

    Args:
        groups: int64 (N,): the aspect-ratio group of each record (0: width > height, 1: not),
            or all 0 for no grouping.
        batch_size: images per batch on this rank (total batch / world size).
        seed: the run's data seed.
        rank, world_size: this process's rank and the number of processes.
        origin: global position of this plan's first sample (0, unless the world size changed
            at a resume, see :class:`libra_rcnn.engine.position.TrainingPosition`).
        block: stream positions processed at once (any value gives the same plan).

    Raises:
        ValueError: for an empty dataset, or a batch size or rank out of range.
    """

    def __init__(self, groups: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 origin: int = 0, block: int = 4096):  # fmt: skip
        if groups.numel() == 0:
            raise ValueError("BatchPlan: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"BatchPlan: batch_size = {batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"BatchPlan: rank {rank} is not in [0, world_size = {world_size})")
        self.groups = groups.to(torch.int64)
        self.num_groups = int(self.groups.max()) + 1
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.origin = origin
        self.block = max(block, 4 * batch_size)
        self._perms = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            generator = torch.Generator().manual_seed(derive_seed(self.seed, EPOCH, epoch))
            self._perms[epoch] = torch.randperm(len(self.groups), generator=generator)
        return self._perms[epoch]

    def indices(self, positions: torch.Tensor) -> torch.Tensor:
        """int64 (M,): the record index of each global position (int64 (M,), ascending)."""
        n = len(self.groups)
        out = torch.empty_like(positions)
        if positions.numel() == 0:
            return out
        first, last = int(positions[0]) // n, int(positions[-1]) // n
        # Sorted positions: each epoch is one slice.
        bounds = torch.searchsorted(positions, torch.arange(first + 1, last + 1) * n).tolist()
        for epoch, lo, hi in zip(range(first, last + 1), [0, *bounds], [*bounds, len(positions)]):
            out[lo:hi] = self._permutation(epoch).index_select(0, positions[lo:hi] - epoch * n)
        return out

    def batches(self, start: int = 0) -> Iterator[List[Tuple[int, int]]]:
        """Batches ``start, start + 1, ...`` of this rank, without end: each a list of
        ``batch_size`` (global position, record index) pairs, in bucket order.

        The stream is grouped a block at a time: in each group, consecutive runs of
        ``batch_size`` positions form batches, and batches leave in the order their last image
        arrived, which is the order in which a bucket-by-bucket grouping emits them. Batches
        before ``start`` are skipped by counting, without building them.
        """
        b, width = self.batch_size, 2
        pending = [torch.empty(0, width, dtype=torch.int64) for _ in range(self.num_groups)]
        emitted, first = 0, 0
        # The first block covers the batches to skip: at most b - 1 images wait in each bucket.
        size = max(self.block, (start + self.num_groups) * b)
        while True:
            local = torch.arange(first, first + size)
            first, size = first + size, self.block
            positions = self.origin + local * self.world_size + self.rank
            index = self.indices(positions)
            pairs = torch.stack([positions, index], dim=1)
            group = self.groups.index_select(0, index)
            full, last = [], []
            for g in range(self.num_groups):
                members = torch.cat([pending[g], pairs[group == g]])
                cut = len(members) // b * b
                chunks = members[:cut].view(-1, b, width)
                pending[g] = members[cut:]
                full.append(chunks)
                last.append(chunks[:, -1, 0])
            chunks = torch.cat(full)
            order = torch.argsort(torch.cat(last))
            if emitted + len(order) <= start:
                emitted += len(order)
                continue
            for k in order[max(start - emitted, 0):].tolist():
                yield [tuple(pair) for pair in chunks[k].tolist()]
            emitted += len(order)


def _seeded_map(mapper: Callable, record: dict, seed: int):
    """``mapper(record)`` with Python's, NumPy's and torch's CPU generators seeded from ``seed``,
    each restored afterwards (the caller's streams are not advanced)."""
    saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        return mapper(record)
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.default_generator.set_state(saved[2])


class _PlannedBatches(IterableDataset):
    """The mapped batches of a plan from batch ``start``; worker ``w`` of ``K`` maps every
    ``K``-th batch from ``start + w`` (PyTorch's loader then returns them in plan order)."""

    def __init__(self, dataset: DatasetFromList, mapper: Callable, plan: BatchPlan, start: int):
        self.dataset, self.mapper, self.plan, self.start = dataset, mapper, plan, start

    def _map(self, position: int, index: int):
        seed = derive_seed(self.plan.seed, SAMPLE, position)
        out = _seeded_map(self.mapper, self.dataset[index], seed)
        # A mapper may refuse a record (None); Detectron2's MapDataset then maps another one at
        # random. Here the other one is drawn from the same aspect-ratio group, seeded by the
        # position, so that the batch is the same in every run.
        same_group = None
        for attempt in itertools.count(1):
            if out is not None:
                return out
            if same_group is None:
                same_group = torch.nonzero(self.plan.groups == self.plan.groups[index]).flatten().tolist()
            if attempt == 3:
                logger.warning("The mapper refused record %d (position %d) 3 times; drawing others", index, position)
            other = random.Random(derive_seed(self.plan.seed, SUBSTITUTE, position, attempt)).choice(same_group)
            out = _seeded_map(self.mapper, self.dataset[other], seed)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batches = self.plan.batches(self.start)
        for batch in itertools.islice(batches, worker, None, workers):
            yield [self._map(position, index) for position, index in batch]


def _as_is(batch):
    return batch


class ExactOrderLoader:
    """An iterable of training batches (lists of mapped dicts), as Detectron2's training loader
    gives, whose order is a :class:`BatchPlan` and whose augmentations are seeded by position.

    Iterating starts a PyTorch ``DataLoader`` at the batch set by :meth:`start_at` (0 by default).

    Args:
        records: the training records (Detectron2's dataset dicts, with ``width`` and ``height``
            when ``aspect_ratio_grouping``).
        mapper: turns a record into the model's input (Detectron2's ``DatasetMapper``).
        batch_size: images per batch on this process.
        seed: the run's data seed; the same on every process.
        rank, world_size: this process's place.
        aspect_ratio_grouping: batch images of the same orientation together, as Detectron2.
        num_workers: data-loader worker processes (0: map in this process).

    Raises:
        ValueError: when grouping by aspect ratio and a record lacks ``width`` or ``height``.
    """

    def __init__(self, records: Sequence[dict], mapper: Callable, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, aspect_ratio_grouping: bool = True, num_workers: int = 0):  # fmt: skip
        if aspect_ratio_grouping:
            missing = next((i for i, r in enumerate(records) if "width" not in r or "height" not in r), None)
            if missing is not None:
                name = records[missing].get("file_name", f"record {missing}")
                raise ValueError(f"aspect-ratio grouping needs each record's width and height; {name} has none "
                                 "(set DATALOADER.ASPECT_RATIO_GROUPING False, or add them to the records)")  # fmt: skip
            groups = torch.tensor([0 if r["width"] > r["height"] else 1 for r in records], dtype=torch.int64)
        else:
            groups = torch.zeros(len(records), dtype=torch.int64)
        self.groups = groups
        self.dataset = DatasetFromList(list(records), copy=False, serialize=True)
        self.mapper = mapper
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.plan = BatchPlan(groups, batch_size, seed, rank, world_size)
        self.start = 0

    @property
    def seed(self) -> int:
        return self.plan.seed

    def start_at(self, batch: int, seed: Optional[int] = None, origin: int = 0) -> None:
        """Make the next iteration's batch number ``batch`` of the plan with ``seed`` (the
        current one when None) and first global position ``origin``."""
        seed = self.plan.seed if seed is None else seed
        self.plan = BatchPlan(self.groups, self.batch_size, seed, self.rank, self.world_size, origin)
        self.start = batch

    def __iter__(self):
        batches = _PlannedBatches(self.dataset, self.mapper, self.plan, self.start)
        # Its own generator: a DataLoader draws its workers' base seed when iterated, which must not
        # advance the generator of the training step that starts it.
        generator = torch.Generator().manual_seed(self.plan.seed)
        loader = DataLoader(batches, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                            generator=generator, persistent_workers=False)  # fmt: skip
        return iter(loader)


def build_exact_train_loader(dataset: Sequence[dict], *, mapper: Callable, total_batch_size: int,
                             aspect_ratio_grouping: bool = True, num_workers: int = 0,
                             seed: Optional[int] = None) -> ExactOrderLoader:  # fmt: skip
    """Detectron2's ``build_detection_train_loader`` (the same arguments, for a list of records
    and its default ``TrainingSampler``), as an :class:`ExactOrderLoader` on this process.

    Args:
        dataset: list of records (``get_detection_dataset_dicts``).
        mapper: ``DatasetMapper(cfg, is_train=True)`` or any callable record -> input dict.
        total_batch_size: images per iteration over all processes.
        aspect_ratio_grouping, num_workers: as Detectron2's.
        seed: the data seed; by default one seed drawn on rank 0 and shared
            (``comm.shared_random_seed``, fixed by the config's ``SEED``), as ``TrainingSampler``.

    Raises:
        ValueError: a total batch that does not split over the processes.
    """
    world_size, rank = comm.get_world_size(), comm.get_rank()
    if total_batch_size <= 0 or total_batch_size % world_size:
        raise ValueError(f"total_batch_size ({total_batch_size}) must be a positive multiple of the world size "
                         f"({world_size})")  # fmt: skip
    seed = comm.shared_random_seed() if seed is None else seed
    return ExactOrderLoader(dataset, mapper, total_batch_size // world_size, seed, rank, world_size,
                            aspect_ratio_grouping, num_workers)  # fmt: skip
