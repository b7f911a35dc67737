"""The prepared GPU run (benchmarks/gpu/run.sh) works before it meets a GPU: its dry run does every
step at toy size on the CPU and writes what the GPU run writes (docs/gpu.md)."""
import json
import os
import subprocess

from conftest import REPO


def test_the_gpu_script_dry_run_does_every_step_and_writes_its_summary(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"))
    run = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1200)  # fmt: skip
    log = (tmp_path / "out" / "run.log").read_text() if (tmp_path / "out" / "run.log").is_file() else ""
    assert run.returncode == 0, (run.stdout + run.stderr + log)[-4000:]
    summary = json.loads((tmp_path / "out" / "gpu_run.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["tests", "syncs", "train", "bench"]
    assert all(s["exit"] == 0 for s in summary["steps"])
    assert set(summary["train"]) == {"libra_rcnn_R_18_FPN_GN", "libra_retinanet_R_18_FPN_GN", "ab_fsaf_R_18_FPN_GN"}
    assert all("box_ap" in r for r in summary["train"].values())
    assert summary["host_syncs"]["libra_rcnn_R_18_FPN_GN"]["count"] <= summary["host_syncs"]["faster_rcnn_R_18_FPN_GN"]["count"]
    bench = json.loads((tmp_path / "out" / "benchmarks.json").read_text())
    assert {d["precision"] for d in bench["detectors"]} == {"float32", "amp"}
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["benchmarks.json", "benchmarks.md", "gpu_run.json", "gpu_run.md", "host_syncs.json", "run.log"]
    assert "# GPU run (dry)" in (tmp_path / "out" / "gpu_run.md").read_text()


def test_an_unknown_argument_is_refused_in_one_line():
    run = subprocess.run(["bash", "benchmarks/gpu/run.sh", "--gpu"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.strip() == "benchmarks/gpu/run.sh: error: unknown argument --gpu (--dry-run, --only STEP,...)"
