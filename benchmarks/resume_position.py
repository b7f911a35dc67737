"""What restoring the data position costs at a resume, for an index of COCO train2017's size.

    .venv/bin/python -m benchmarks.resume_position [--out benchmarks/results/resume_position.json]

A resume at iteration ``k`` finds batch ``k`` of each process's plan
(:class:`libra_rcnn.data.exact_order.BatchPlan`): it draws the permutations of the epochs before
it and replays the aspect-ratio grouping over the records' orientation, without loading an
image. This measures, on 117,266 records (COCO train2017's images with annotations) of random
orientation (70 % landscape), the seconds from nothing to batch ``k``, for the 1x schedule's
total batch of 16 on one process and on 8 (2 images each), at iterations 0, 10,000 and 90,000
(the 1x schedule's last), median of 5; and the seconds to read the orientations from the
records (done once, when the loader is built).
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from libra_rcnn.data.exact_order import BatchPlan, ExactOrderLoader

from .common import environment, load_average, repeat_timed

REPO = Path(__file__).resolve().parents[1]
COCO_TRAIN_IMAGES = 117266
ITERATIONS = (0, 10000, 90000)
LAYOUTS = ((1, 16), (8, 2))  # (processes, images per process)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.resume_position", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "resume_position.json"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    landscape = torch.rand(COCO_TRAIN_IMAGES, generator=generator) < 0.7
    records = [{"file_name": f"{i:012d}.jpg", "width": 640 if flat else 480, "height": 480 if flat else 640}
               for i, flat in enumerate(landscape.tolist())]  # fmt: skip
    build = statistics.median(repeat_timed(lambda: ExactOrderLoader(records, dict, batch_size=16, seed=1), "cpu", 0, args.repeats))
    groups = ExactOrderLoader(records, dict, batch_size=16, seed=1).groups
    rows = []
    for world_size, per_process in LAYOUTS:
        for iteration in ITERATIONS:
            # The last rank: its stream reaches furthest into the epochs.
            def restore():
                plan = BatchPlan(groups, per_process, seed=1, rank=world_size - 1, world_size=world_size)
                return next(plan.batches(iteration))

            rows.append({"processes": world_size, "images_per_process": per_process, "iteration": iteration,
                         "seconds": statistics.median(repeat_timed(restore, "cpu", 0, args.repeats))})  # fmt: skip
    result = {
        "records": COCO_TRAIN_IMAGES,
        "loader_build_seconds": build,
        "restore": rows,
        "repeats": args.repeats,
        "environment": environment(),
        "load_average": load_average(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(f"{row['processes']} x {row['images_per_process']} images, iteration {row['iteration']:>6}: "
              f"{row['seconds'] * 1000:.1f} ms")  # fmt: skip
    print(f"orientation of {COCO_TRAIN_IMAGES} records read in {build * 1000:.0f} ms")
    return result


if __name__ == "__main__":
    main()
