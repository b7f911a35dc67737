"""The benchmark package (benchmarks/): inputs, bookkeeping, target checks and report; no timings."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import bfp, detectors, report, run, sampler  # noqa: E402
from conftest import require_reference_env  # noqa: E402


def test_pyramid_sizes_of_a_coco_input():
    # 800 x 1344 (1333 padded to a multiple of 32): strides 4 ... 64, ceil division.
    assert bfp.pyramid_sizes() == [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]


def test_sampler_inputs_span_positives_and_negatives():
    inputs = sampler.make_inputs(3, seed=1)
    assert all(1 <= g <= sampler.MAX_GTS for g in inputs["num_gts"])
    for num_gts, classes, matched, iou in zip(
        *(inputs[k] for k in ("num_gts", "gt_classes", "matched_idxs", "max_iou"))
    ):
        assert classes.shape == matched.shape == iou.shape == (sampler.PROPOSALS_PER_IMAGE,)
        assert float(iou.min()) >= 0 and float(iou.max()) <= 1
        positive = classes < sampler.NUM_CLASSES
        # Matched at IoU 0.5: positives exactly where the best IoU reaches it.
        assert torch.equal(positive, iou >= 0.5)
        assert 0 < int(positive.sum()) < sampler.PROPOSALS_PER_IMAGE
        assert int(matched.max()) < num_gts
        # IoU spans 0..1 among the negatives too: each of the paper's three bins is populated.
        for low, high in ((0, 1 / 6), (1 / 6, 1 / 3), (1 / 3, 0.5)):
            assert int(((iou >= low) & (iou < high)).sum()) > 0
    flat = sampler.batch_inputs(inputs, "cpu")
    assert flat["num_gts"] == sum(inputs["num_gts"]) and flat["num_images"] == 3
    first = inputs["num_gts"][0]
    n = sampler.PROPOSALS_PER_IMAGE
    assert torch.equal(flat["gt_index"][n : 2 * n], inputs["matched_idxs"][1] + first)
    assert flat["image_index"].tolist() == [0] * n + [1] * n + [2] * n


def test_saved_for_backward_counts_distinct_tensors_without_inputs():
    a = torch.randn(1024, 256, requires_grad=True)  # 1 MiB of float32
    # exp saves its output (1 MiB); multiplying by a number saves nothing; the input excluded.
    assert bfp.saved_for_backward_mib(lambda: (a * 2).exp(), [a]) == pytest.approx(1.0)
    # a * a saves a twice (one storage): counted once, or not at all when excluded.
    assert bfp.saved_for_backward_mib(lambda: a * a, []) == pytest.approx(1.0)
    assert bfp.saved_for_backward_mib(lambda: a * a, [a]) == 0


class FakeWorker:
    def __init__(self, name, log):
        self.name, self.log, self.calls = name, log, 0

    def ask(self, command, arg=None):
        self.calls += 1
        self.log.append(self.name)
        return 10.0 * self.calls if self.name == "a" else float(self.calls)


def test_alternate_interleaves_and_drops_the_warmup():
    log = []
    times = detectors._alternate({"a": FakeWorker("a", log), "b": FakeWorker("b", log)}, "train", warmup=1, repeats=3)
    assert "".join(log) == "abbaabba"
    assert times == {"a": [20.0, 30.0, 40.0], "b": [2.0, 3.0, 4.0]}


def pair_result(device="cpu", suite="COCO size", train=(1.0, 1.04), infer=(1.0, 1.10), peak=(1000.0, 1120.0)):
    models = {
        key: {"train_s": train[i], "infer_s": infer[i], "train_peak_mib": peak[i], "infer_peak_mib": peak[i] / 2}
        for i, key in enumerate(("baseline", "libra"))
    }
    ratio = {k: models["libra"][k] / models["baseline"][k] for k in models["baseline"]}
    return {"suite": suite, "device": device, "baseline_name": "Faster R-CNN", "libra_name": "Libra R-CNN",
            "models": models, "ratio": ratio, "batch_size": 1, "input_hw": [800, 1333],
            "weights": {"baseline": "random init", "libra": "random init"}}  # fmt: skip


def test_targets_are_met_or_missed_by_their_margin():
    results = {
        "detectors": [pair_result()],
        "sampler": {"rows": [{"batch": 8, "device": "cpu", "speedup_vs_mmdet": 12.0}]},
        "non_local": [{"device": "cpu", "batch": 1, "max_abs_diff": 3e-7}],
        "tests": {"tests/test_sampling.py": {"passed": True, "summary": "32 passed"}},
    }
    rows = report.check_targets(results)

    def row(prefix):
        (found,) = [r for r in rows if r["target"].startswith(prefix)]
        return found

    assert row("training step")["met"] is True  # 1.04 against 1.05
    assert row("inference") | {"target": ""} == {
        "target": "",
        "measured": "1.100x",
        "met": False,
        "margin": "missed by 0.05x",  # 1.10 against 1.05
    }
    assert row("peak training memory")["margin"] == "missed by 0.02x"  # 1.12 against 1.10
    assert row("sampler >=")["met"] is True and row("sampler >=")["measured"] == "12.0x"
    assert row("sampler: zero")["met"] is None and row("sampler: zero")["measured"] == "no GPU"
    assert row("fused non-local")["met"] is True
    assert row("accuracy unchanged")["met"] is True


def test_a_ratio_target_gives_the_spread_of_the_rounds():
    pair = pair_result(train=(1.0, 1.04))
    pair["paired_ratios"] = {"train": [1.0, 1.02, 1.03, 1.04, 1.05, 1.06, 1.20], "infer": [1.1, 1.1]}
    rows = {r["target"].split(" ")[0]: r for r in report.check_targets({"detectors": [pair]})}
    # Q1 and Q3 of seven rounds: the 2nd and the 6th smallest; too few rounds give no spread.
    assert rows["training"]["measured"] == "1.040x (rounds: 1.020–1.060)"
    assert rows["inference"]["measured"] == "1.100x"


def test_the_libra_model_takes_the_baselines_common_weights():
    from torch import nn

    class Libra(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Module()
            self.backbone.fpn = nn.Linear(3, 4)  # the BFP's wrapped FPN
            self.backbone.refine = nn.Linear(4, 4)  # what the method adds
            self.head = nn.Linear(4, 2)

    source = {"backbone.weight": torch.full((4, 3), 1.0), "backbone.bias": torch.full((4,), 2.0),
              "head.weight": torch.full((2, 4), 3.0), "head.bias": torch.full((3,), 4.0)}  # fmt: skip
    model = Libra()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert detectors.load_common_weights(model, source) == 3
    state = model.state_dict()
    assert torch.equal(state["backbone.fpn.weight"], source["backbone.weight"])
    assert torch.equal(state["backbone.fpn.bias"], source["backbone.bias"])
    assert torch.equal(state["head.weight"], source["head.weight"])
    for kept in ("head.bias", "backbone.refine.weight", "backbone.refine.bias"):  # other shape; not in source
        assert torch.equal(state[kept], before[kept])


def test_markdown_says_no_gpu_and_shows_the_measured_ratio():
    results = {
        "command": "python -m benchmarks", "date": "2026-01-01 00:00", "devices": ["cpu"],
        "environment": {"git_commit": "abc", "cpu": "CPU", "cpu_cores": 2, "torch_threads": 2, "memory_gib": 8,
                        "gpu": "no GPU", "python": "3", "torch": "2", "detectron2": "0.7", "numpy": "1",
                        "libra_rcnn": "projects/LibraRCNN/libra_rcnn"},
        "options": {"train_repeats": 10, "train_warmup": 2, "coco_train_repeats": 3, "coco_train_warmup": 1,
                    "infer_repeats": 20, "infer_warmup": 2, "coco_infer_repeats": 5, "coco_infer_warmup": 2},
        "load_before": [0.1, 0.1, 0.1], "load_after": [0.2, 0.2, 0.2],
        "detectors": [pair_result(train=(2.0, 2.5))],
    }  # fmt: skip
    results["targets"] = report.check_targets(results)
    text = report.to_markdown(results)
    assert "no GPU" in text
    assert "| 2.000 | 2.500 | 1.250x |" in text
    assert "**missed** (missed by 0.2x)" in text


def test_bad_counts_are_refused_naming_the_option():
    with pytest.raises(SystemExit):
        run.parse_args(["--coco-train-repeats", "0"])
    assert run.parse_args(["--only", "sampler", "--sampler-batches", "2", "8"]).sampler_batches == [2, 8]


RCNN_BASELINE = "configs/FashionScenes/ablation/table2_l1_a_baseline.yaml"
RCNN_LIBRA = "configs/FashionScenes/ablation/table2_l1_d_balanced_l1.yaml"


def error_line(capsys, argv):
    """The exit status and the last stderr line of ``run.parse_args(argv)``, which must refuse."""
    with pytest.raises(SystemExit) as exited:
        run.parse_args(argv)
    return exited.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_fashion_scenes_weights_are_refused_naming_both_ways_out(tmp_path, capsys):
    code, line = error_line(capsys, ["--families", "rcnn", "--checkpoints", str(tmp_path)])
    assert code == 2
    assert line == (
        f"python -m benchmarks: error: no trained weights for {RCNN_BASELINE}, {RCNN_LIBRA} in {tmp_path} "
        f"(looked for {tmp_path}/<config name>/seed_<N>/model_final.pth and {tmp_path}/<config name>/model_final.pth); "
        "pass --random-weights to time randomly initialised models instead, or train them first: "
        f".venv/bin/python -m libra_rcnn.ablation --out {tmp_path} --configs {RCNN_BASELINE} {RCNN_LIBRA}"
    )
    # Both families: one training command per pair (a pair's configs share one schedule).
    code, line = error_line(capsys, ["--checkpoints", str(tmp_path)])
    assert code == 2 and line.count("-m libra_rcnn.ablation") == 2
    assert line.endswith("--configs configs/FashionScenes/retinanet_R_18_FPN_GN.yaml "
                         "configs/FashionScenes/libra_retinanet_R_18_FPN_GN.yaml")  # fmt: skip
    # A folder inside the repository (the default output/runs) is shown from its root, where the commands run.
    args = run.parse_args(["--families", "rcnn", "--random-weights"])
    args.random_weights, args.checkpoints = False, str(REPO / "output" / "absent_runs")
    assert " in output/absent_runs (looked for output/absent_runs/<config name>/seed_<N>/" in run.weights_problem(args)
    assert "--out output/absent_runs --configs" in run.weights_problem(args)


def test_random_weights_are_an_explicit_choice(tmp_path, capsys):
    args = run.parse_args(["--families", "rcnn", "--random-weights"])
    assert args.random_weights and run.weights_problem(args) is None
    # An empty --checkpoints no longer means random init, and the two options exclude each other.
    code, line = error_line(capsys, ["--checkpoints", ""])
    assert code == 2 and line == (
        "python -m benchmarks: error: --checkpoints needs a folder; "
        "--random-weights times the FashionScenes pairs with random init"
    )
    code, line = error_line(capsys, ["--checkpoints", str(tmp_path), "--random-weights"])
    assert code == 2 and line.endswith("argument --random-weights: not allowed with argument --checkpoints")


def test_runs_without_fashion_scenes_detectors_need_no_weights(tmp_path):
    # COCO-size pairs are timed with random init by design; other parts time no detector.
    for argv in (["--suites", "COCO size"], ["--only", "sampler", "bfp", "non_local", "tests"]):
        args = run.parse_args([*argv, "--checkpoints", str(tmp_path)])
        assert not args.random_weights and run.weights_problem(args) is None


def test_weights_in_either_layout_are_accepted(tmp_path, capsys):
    # The ablation runner's OUT/<config name>/seed_<N>/ (lowest seed first) and a train_net.py OUTPUT_DIR.
    baseline = tmp_path / "table2_l1_a_baseline"
    for seed in (9, 10):
        (baseline / f"seed_{seed}").mkdir(parents=True)
        (baseline / f"seed_{seed}" / "model_final.pth").write_bytes(b"")
    libra = tmp_path / "table2_l1_d_balanced_l1"
    libra.mkdir()
    code, line = error_line(capsys, ["--families", "rcnn", "--checkpoints", str(tmp_path)])
    assert code == 2 and line.startswith(f"python -m benchmarks: error: no trained weights for {RCNN_LIBRA} in")
    assert f"(looked for {tmp_path}/table2_l1_d_balanced_l1/seed_<N>/model_final.pth and " in line
    (libra / "model_final.pth").write_bytes(b"")
    args = run.parse_args(["--families", "rcnn", "--checkpoints", str(tmp_path)])
    assert run.weights_problem(args) is None
    assert detectors.checkpoint_for(RCNN_BASELINE, str(tmp_path)) == str(baseline / "seed_9" / "model_final.pth")
    assert detectors.checkpoint_for(RCNN_LIBRA, str(tmp_path)) == str(libra / "model_final.pth")


def test_measure_pair_refuses_a_folder_without_the_pairs_weights(tmp_path):
    # Raised before the batch is made or a worker started, so it needs no dataset.
    with pytest.raises(FileNotFoundError, match=f"no trained weights for {RCNN_BASELINE}, {RCNN_LIBRA} in"):
        detectors.measure_pair(detectors.PAIRS[0], "cpu", 1, 0, 1, 0, 1, checkpoints=str(tmp_path), seed=0, threads=1)


def test_the_command_stops_before_measuring_without_weights(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "tests", "detectors", "--checkpoints", str(tmp_path / "runs"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1].startswith("python -m benchmarks: error: no trained weights for ")
    assert not out.exists()


def test_reference_samplers_on_the_same_inputs(monkeypatch):
    require_reference_env()
    monkeypatch.syspath_prepend(str(sampler.REFERENCE_ENV))
    from benchmarks import reference_sampler

    inputs = sampler.make_inputs(2, seed=3)
    combined = reference_sampler.load_samplers()
    assigned = reference_sampler.assign_results(inputs, "cpu")
    for result, classes in zip(assigned, inputs["gt_classes"]):
        assert torch.equal(result.gt_inds > 0, classes < sampler.NUM_CLASSES)
    for (pos, neg), classes in zip(reference_sampler.sample_batch(combined, assigned), inputs["gt_classes"]):
        assert bool((classes[pos] < sampler.NUM_CLASSES).all()) and bool((classes[neg] == sampler.NUM_CLASSES).all())
        assert pos.numel() <= 128 and pos.numel() + neg.numel() == sampler.ROIS_PER_IMAGE
    assert combined.neg_sampler.floor_thr == 0  # switched from -1 by its first call


def test_the_non_local_blocks_multiply_adds_are_counted_as_the_formula_says():
    from fvcore.nn import FlopCountAnalysis

    from benchmarks import flops
    from libra_rcnn import NonLocalBlock2d

    block = NonLocalBlock2d(8).eval()
    x = torch.randn(1, 8, 5, 7)
    counter = FlopCountAnalysis(block, x).set_op_handle("aten::scaled_dot_product_attention", flops.sdpa_flop_jit)
    counter.unsupported_ops_warnings(False)
    # N = 35 positions, C = 8: four 1x1 convolutions 4 * 35 * 64, the attention 2 * 35 * 35 * 8.
    assert flops.non_local_macs(5, 7, 8) == 4 * 35 * 64 + 2 * 35 * 35 * 8
    assert counter.total() == flops.non_local_macs(5, 7, 8)
    # At P4 of an 800 x 1344 input: 1.10 G + 9.03 G.
    assert round(flops.non_local_macs(50, 84, 256) / 1e9, 2) == 10.13


def test_runs_with_fresh_processes_combine_into_the_median_ratio():
    def run(train, infer, rounds):
        result = pair_result(train=train, infer=infer)
        for key, (t, i) in zip(("baseline", "libra"), zip(train, infer)):
            result["models"][key]["train_times_s"] = [t] * rounds
        result["paired_ratios"] = {"train": [train[1] / train[0]] * rounds, "infer": [infer[1] / infer[0]] * rounds}
        return result

    runs = [run((1.0, 1.10), (1.0, 1.00), 2), run((2.0, 2.04), (1.0, 1.20), 2), run((1.0, 1.02), (1.0, 1.04), 2)]
    combined = detectors.over_processes(runs, "libra", "baseline")
    assert combined["process_ratios"]["train_s"] == pytest.approx([1.02, 1.02, 1.10])
    assert combined["ratio"]["train_s"] == pytest.approx(1.02)  # the median of the runs' ratios
    assert combined["ratio"]["infer_s"] == pytest.approx(1.04)
    assert combined["models"]["baseline"]["train_s"] == 1.0  # median of 1.0, 2.0, 1.0
    assert combined["models"]["libra"]["train_times_s"] == [1.10, 1.10, 2.04, 2.04, 1.02, 1.02]
    assert len(combined["paired_ratios"]["train"]) == 6 and combined["processes"] == 3
    (row,) = [r for r in report.check_targets({"detectors": [combined]}) if r["target"].startswith("training")]
    assert row["measured"] == "1.020x (rounds: 1.020–1.100; 3 processes: 1.020–1.100)"
    # One run is kept as it is.
    assert detectors.over_processes(runs[:1], "libra", "baseline")["ratio"] == runs[0]["ratio"]
