"""On a GPU only (skipped without CUDA): the host-device sync counts under CUDA's own debug mode,
and mixed-precision training steps. benchmarks/gpu/run.sh runs this file on the GPU machine
(docs/gpu.md); tests/test_host_syncs.py and tests/test_precision.py hold the CPU side.
"""
import math

import pytest
import torch

from benchmarks.host_syncs import PAIRS, audit_components, cuda_sync_warnings, step_events, training_batch

from conftest import REPO, TINY, args_for, load_cfg

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
)


@pytest.fixture(scope="module")
def batch(tiny_scenes):
    return training_batch("tiny_scenes_train", 2)


@pytest.mark.parametrize("name", [name for pair in PAIRS for name in pair])
def test_cuda_counts_the_syncs_the_cpu_audit_counts(name, batch):
    cfg = load_cfg(f"configs/FashionScenes/{name}.yaml", ["MODEL.DEVICE", "cuda"])
    events, messages = step_events(cfg, batch, cuda_check=True)
    on_device = [f"{e.op} at {e.site}" for e in events if e.on_device]
    print(f"[syncs] {name}: CPU audit {len(on_device)} on the device, CUDA's debug mode {len(messages)}")
    assert len(messages) == len(on_device), (sorted(set(messages)), on_device)


@pytest.mark.parametrize("baseline,libra", PAIRS[:2])
def test_each_libra_model_syncs_no_more_than_its_baseline_on_cuda(baseline, libra, batch):
    counts = {}
    for name in (baseline, libra):
        cfg = load_cfg(f"configs/FashionScenes/{name}.yaml", ["MODEL.DEVICE", "cuda"])
        counts[name] = len(step_events(cfg, batch, cuda_check=True)[1])
    assert counts[libra] <= counts[baseline], counts


def test_the_components_make_no_cuda_sync():
    for name, messages in audit_components("cuda", cuda_sync_warnings).items():
        assert messages == [], (name, messages)


@pytest.mark.parametrize("config", ["libra_rcnn_R_18_FPN_GN", "libra_retinanet_R_18_FPN_GN", "ab_fsaf_R_18_FPN_GN"])
def test_amp_trainer_steps_are_finite(config, tiny_scenes, tmp_path):
    from detectron2.engine import AMPTrainer
    from detectron2.utils.events import EventStorage

    from libra_rcnn.config import build_config
    from libra_rcnn.engine import Trainer

    args = args_for("--config-file", str(REPO / f"configs/FashionScenes/{config}.yaml"), *TINY,
                    "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    trainer = Trainer(build_config(args))
    assert isinstance(trainer._trainer, AMPTrainer)
    with EventStorage(0) as storage:
        trainer._trainer.storage = storage
        for it in range(3):
            storage.iter = trainer._trainer.iter = it
            trainer._trainer.run_step()
    losses = storage.history("total_loss").values()
    assert losses and all(math.isfinite(v) for v, _ in losses)
