"""Exact resume: a run killed between two checkpoints and resumed ends with the same model, bit
for bit, as the run that was never stopped, and logs the same losses (docs/reports/distributed.md#tested-in-ci)."""
import collections
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from libra_rcnn.data.exact_order import BatchPlan, ExactOrderLoader

from conftest import CONFIG, REPO, TINY_CLI, assert_same_weights, final_weights, train_net, train_net_env

# --- the plan of batches -------------------------------------------------------------------


def grouped_one_by_one(plan: BatchPlan, count: int):
    """Detectron2's AspectRatioGroupedDataset, written plainly: two buckets filled in stream order."""
    buckets, out = [[] for _ in range(plan.num_groups)], []
    for q in itertools.count():
        position = plan.origin + q * plan.world_size + plan.rank
        index = int(plan.indices(torch.tensor([position]))[0])
        bucket = buckets[int(plan.groups[index])]
        bucket.append((position, index))
        if len(bucket) == plan.batch_size:
            out.append(list(bucket))
            bucket.clear()
            if len(out) == count:
                return out


@pytest.mark.parametrize("batch_size, world_size, rank, block", [(2, 1, 0, 8), (3, 2, 1, 16), (5, 4, 3, 9)])
def test_the_plan_groups_like_detectron2_and_starts_anywhere(batch_size, world_size, rank, block):
    groups = (torch.rand(37, generator=torch.Generator().manual_seed(4)) < 0.3).long()
    plan = BatchPlan(groups, batch_size, seed=11, rank=rank, world_size=world_size, block=block)
    first = list(itertools.islice(plan.batches(0), 40))
    assert first == grouped_one_by_one(plan, 40)
    assert list(itertools.islice(plan.batches(23), 10)) == first[23:33]
    # Each epoch is a permutation: every image once per 37 global positions.
    epoch = plan.indices(torch.arange(37, 74))
    assert sorted(epoch.tolist()) == list(range(37))
    other_seed = BatchPlan(groups, batch_size, seed=12, rank=rank, world_size=world_size, block=block)
    assert list(itertools.islice(other_seed.batches(0), 40)) != first


def test_ranks_share_one_order_without_overlap():
    groups = torch.zeros(24, dtype=torch.int64)
    taken = []
    for rank in range(3):
        plan = BatchPlan(groups, 2, seed=5, rank=rank, world_size=3)
        taken += [p for batch in itertools.islice(plan.batches(0), 4) for p, _ in batch]
    assert sorted(taken) == list(range(24))


def random_augmentation(record):
    """A mapper drawing from the three global generators, as Detectron2's augmentations do."""
    return {"id": record["id"], "draws": (random.random(), float(np.random.rand()), float(torch.rand(())))}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_and_augmentations_do_not_depend_on_workers_or_the_start(num_workers):
    records = [{"id": i, "width": 40 + 7 * i % 30, "height": 50} for i in range(20)]

    def batches(workers, start, count):
        loader = ExactOrderLoader(records, random_augmentation, batch_size=2, seed=3, num_workers=workers)
        loader.start_at(start)
        return list(itertools.islice(iter(loader), count))

    reference = batches(0, 0, 12)
    assert batches(num_workers, 0, 12) == reference
    assert batches(num_workers, 5, 7) == reference[5:]
    assert all(len({d["draws"] for d in batch}) == 2 for batch in reference)  # each sample its own draws
    before = torch.get_rng_state()
    batches(0, 0, 2)
    assert torch.equal(torch.get_rng_state(), before), "mapping in this process must not advance its generator"


def test_a_record_without_size_is_refused_for_grouping():
    with pytest.raises(ValueError, match="a.png has none.*ASPECT_RATIO_GROUPING"):
        ExactOrderLoader([{"file_name": "a.png"}], random_augmentation, batch_size=1, seed=0)


def resumed_hook(loader, start, state):
    """A :class:`TrainingPosition` hook of a trainer at ``start`` with ``loader``, after its
    ``before_train`` with the checkpoint's ``state`` (None for a fresh run)."""
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    from libra_rcnn.engine.position import TrainingPosition

    hook = TrainingPosition()
    hook.trainer = SimpleNamespace(start_iter=start, iter=start, data_loader=loader, model=torch.nn.Linear(1, 1),
                                   storage=EventStorage(start))  # fmt: skip
    if state is not None:
        hook.load_state_dict(state)
    hook.before_train()
    return hook


def test_a_resume_on_another_world_size_continues_the_order_of_samples():
    """4 iterations of 2 images on 1 process, 3 on 2 processes of 1 image each, resumed again on 2
    processes for 2 more: the images, in order of global position, are those of the run that
    never stopped (7 records, so the epochs wrap), none skipped, none twice."""
    records = [{"id": i} for i in range(7)]

    def loaders(batch_size, world_size):
        return [ExactOrderLoader(records, lambda r: r["id"], batch_size, seed=9, rank=rank, world_size=world_size,
                                 aspect_ratio_grouping=False) for rank in range(world_size)]  # fmt: skip

    def take(loader, count):
        return list(itertools.islice(iter(loader), count))

    (whole,) = loaders(2, 1)
    expected = [i for batch in take(whole, 9) for i in batch]

    (single,) = loaders(2, 1)
    state = resumed_hook(single, 0, None).state_dict()
    seen = [i for batch in take(single, 4) for i in batch]
    for start, count in ((4, 3), (7, 2)):
        pair = loaders(1, 2)
        hooks = [resumed_hook(loader, start, state) for loader in pair]
        assert [(h.origin, h.origin_iter) for h in hooks] == [(8, 4)] * 2  # global sample 8, taken at iteration 4
        per_rank = [take(loader, count) for loader in pair]
        seen += [i for step in zip(*per_rank) for batch in step for i in batch]  # rank 0's, then rank 1's
        state = hooks[0].state_dict()
    assert seen == expected
    assert all(sorted(seen[e * 7 : e * 7 + 7]) == list(range(7)) for e in range(2))


@pytest.mark.parametrize("seed", range(6))
def test_with_grouping_a_resume_on_another_world_size_skips_at_most_the_waiting_images(seed):
    """5 batches of 4 on one process, then 2 processes of 2 from global sample 20: the images that
    waited in a bucket are skipped, as many are seen twice, at most 3 (batch - 1) per orientation."""
    groups = (torch.rand(50, generator=torch.Generator().manual_seed(seed)) < 0.4).long()
    before = [p for batch in itertools.islice(BatchPlan(groups, 4, seed).batches(0), 5) for p, _ in batch]
    after = [p for rank in range(2) for batch in
             itertools.islice(BatchPlan(groups, 2, seed, rank=rank, world_size=2, origin=20).batches(0), 10)
             for p, _ in batch]  # fmt: skip
    skipped = set(range(20)) - set(before) - set(after)
    twice = set(before) & set(after)
    assert len(skipped) == len(twice) <= 3 * 2
    assert all(count == 1 for count in collections.Counter(after).values())


# --- killed, resumed and compared with the run that was never stopped ----------------------------

ITERATIONS = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "15", "SEED", "7", "DATASETS.TEST", "()",
              "TEST.EVAL_PERIOD", "0"]  # fmt: skip


def command(out, workers=0, num_gpus=1):
    """train_net.py's arguments for this file's training in ``out``."""
    return ["--resume", "--num-gpus", str(num_gpus), "--config-file", CONFIG, *TINY_CLI, *ITERATIONS,
            "DATALOADER.NUM_WORKERS", str(workers), "OUTPUT_DIR", str(out)]  # fmt: skip


def logged(out):
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return {m["iteration"]: {k: v for k, v in m.items() if k.startswith("loss_") or k == "total_loss"}
            for m in lines if "total_loss" in m}  # fmt: skip


def run(argv, datasets_root):
    done = train_net(*argv, datasets_root=datasets_root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def run_killed_then_resumed(argv, out, datasets_root):
    """Start train_net.py with ``argv``, SIGKILL its whole process group once iteration 19 is
    logged (after the checkpoint of iteration 14, before that of 29), then run it again. Returns
    the second log."""
    proc = subprocess.Popen([sys.executable, str(REPO / "train_net.py"), *argv], cwd=REPO,
                            env=train_net_env(datasets_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if (out / "metrics.json").is_file() and 19 in logged(out):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert (out / "last_checkpoint").read_text() == "model_0000014.pth"
    log = run(argv, datasets_root)
    assert "Starting training from iteration 15" in log
    assert "Resuming the data at batch 15 of seed" in log
    return log


def tensorboard_scalars(out, tag="total_loss"):
    """The (step, value) of ``tag`` as TensorBoard shows them, over every event file of the folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), purge_orphaned_data=True).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def tensorboard_steps(out, tag="total_loss"):
    return [step for step, _ in tensorboard_scalars(out, tag)]


def test_tensorboard_hides_the_steps_past_the_checkpoint_of_a_resumed_run(tmp_path):
    """An interrupted run logged steps 19 and 39; the run resumed at 25 logs 39 again: TensorBoard
    shows 19 once and the new 39 once."""
    from types import SimpleNamespace

    from detectron2.utils.events import EventStorage

    from libra_rcnn.engine.position import TensorboardFromStart

    for start, values in ((0, {19: 1.0, 39: 2.0}), (25, {39: 3.0})):
        writer = TensorboardFromStart(str(tmp_path), SimpleNamespace(start_iter=start))
        with EventStorage(start) as storage:
            for iteration, value in values.items():
                storage.iter = iteration
                storage.put_scalar("total_loss", value, smoothing_hint=False)
                writer.write()
        writer.close()
    assert tensorboard_scalars(tmp_path) == [(19, 1.0), (39, 3.0)]


def assert_same_run(a, b):
    assert_same_weights(final_weights(a), b)
    assert logged(a) == logged(b) and sorted(logged(a)) == [19, 39]


@pytest.fixture(scope="module")
def uninterrupted(tiny_scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(command(out), tiny_scenes)
    return out


def test_two_uninterrupted_runs_are_identical(uninterrupted, tiny_scenes, tmp_path):
    run(command(tmp_path / "twin"), tiny_scenes)
    assert_same_run(uninterrupted, tmp_path / "twin")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_killed_and_resumed_ends_bit_identical(workers, uninterrupted, tiny_scenes, tmp_path):
    """With 2 workers too: the batches do not depend on the number of workers."""
    out = tmp_path / "killed"
    run_killed_then_resumed(command(out, workers), out, tiny_scenes)
    assert_same_run(uninterrupted, out)
    assert tensorboard_steps(out) == tensorboard_steps(uninterrupted) == [19, 39]


def test_two_processes_killed_and_resumed_end_bit_identical(tiny_scenes, tmp_path):
    run(command(tmp_path / "whole", num_gpus=2), tiny_scenes)
    out = tmp_path / "killed"
    run_killed_then_resumed(command(out, num_gpus=2), out, tiny_scenes)
    assert_same_run(tmp_path / "whole", out)


def test_a_checkpoint_without_a_position_resumes_from_the_first_batch(uninterrupted, tiny_scenes, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    state = torch.load(uninterrupted / "model_0000029.pth", map_location="cpu", weights_only=False)
    del state["trainer"]["hooks"]["TrainingPosition"]
    torch.save(state, out / "model_0000029.pth")
    (out / "last_checkpoint").write_text("model_0000029.pth")
    log = run(command(out), tiny_scenes)
    assert "holds no training position (written by an older version): the data order restarts" in log
    assert "Starting training from iteration 30" in log
