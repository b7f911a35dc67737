"""The figures the docs quote are generated from the committed results (docs/generate.py, make docs):
every generated block equals what the results give, a hand edit is caught, and each block kind
computes its figures as the hand-computed values below."""
import json
import subprocess
import sys

import pytest

from conftest import REPO


def check(*args):
    return subprocess.run([sys.executable, str(REPO / "docs" / "generate.py"), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture
def generate():
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    return generate


@pytest.fixture
def results(tmp_path, monkeypatch, generate):
    """A docs/ folder of small result files whose figures are worked out by hand in the tests."""
    runner = {"rows": [
        {"name": "base", "per_seed": {m: {"1": 10.0, "2": 11.0, "3": 12.0} for m in generate.METRICS},
         "AP": {"mean": 11.0, "std": 1.0}},
        {"name": "plus", "per_seed": {**{m: {"1": 10.0, "2": 11.0, "3": 12.0} for m in generate.METRICS},
                                      "AP": {"1": 12.0, "2": 13.5, "3": 14.0}, "APs": {"1": 11.0, "2": 10.0, "3": 12.5}},
         "AP": {"mean": 13.1666, "std": 1.04}},
    ]}  # fmt: skip
    (tmp_path / "runner.json").write_text(json.dumps(runner))
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in [
        {"iteration": 19, "loss": 2.0, "lr": 0.001}, {"iteration": 39, "loss": 1.5}, {"iteration": 59, "loss": 1.25},
        {"iteration": 59, "bbox/AP": 30.0}]))  # fmt: skip
    (tmp_path / "table.md").write_text("Schedule: one line of text.\n\n| config | AP | ΔAP | s/iter |\n|---|---|---|---|\n"
                                       "| a | 34.1 | +0.0 | 0.600 |\n| b | 35.1 | +0.9 | 0.610 |\n\n| other | x |\n|---|---|\n| c | 1 |\n")  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps({"runs": [{"commit": "abc", "seconds": 541, "share": 0.6486},
                                                            {"commit": "def", "seconds": 120, "share": None}],
                                                   "nested": {"x_one": {"d": -0.02}, "x_two": {"d": 0.01}, "y": {"d": 5}}}))  # fmt: skip
    monkeypatch.setattr(generate, "DOCS", tmp_path)
    return tmp_path


def test_every_generated_block_matches_the_committed_results():
    proc = check("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_page_with_a_generated_block_is_one_the_script_rewrites(generate):
    written = set(generate.pages())
    pages = [REPO / "README.md", *(p for p in (REPO / "docs").rglob("*.md") if "results" not in p.relative_to(REPO).parts)]
    marked = {page for page in pages if "<!-- generated: " in page.read_text()}
    assert marked and marked <= written, sorted(str(p.relative_to(REPO)) for p in marked - written)


def test_a_hand_edited_figure_is_caught(tmp_path, monkeypatch, generate):
    page = tmp_path / "page.md"
    body = generate.block_text("table2_decomposition")
    assert "| d → e |" in body and "| a → e |" in body
    page.write_text(f"<!-- generated: table2_decomposition -->\n{body.replace(' ± ', ' ± 9', 1)}<!-- end generated -->\n")
    monkeypatch.setattr(generate, "pages", lambda: [page])
    monkeypatch.setattr(generate, "REPO", tmp_path)
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0
    assert body in page.read_text()


def test_value_reads_one_figure_of_json_json_lines_and_markdown(results, generate):
    value = lambda arg: generate.block_text("value " + arg)  # noqa: E731
    assert value("runner.json rows.name=plus.AP.mean .1f") == "13.2"
    assert value("runner.json rows.1.per_seed.AP.2 +.1f") == "+13.5"
    assert value("metrics.json iteration=39.loss .2f") == "1.50"  # JSON lines, a record picked by a field
    assert value('metrics.json "*.loss" .2f mean') == "1.58"  # records without the key are skipped
    assert value('metrics.json "*.loss" .2f range') == "1.25–2.00"
    assert value('metrics.json "*.loss" .1f list') == "2.0, 1.5, 1.2"
    assert value("table.md config=b.ΔAP") == "+0.9"  # a Markdown cell, as written
    assert value('table.md "config=*.s/iter" .3f max') == "0.610"  # only the first table is read
    assert value("run.json runs.commit=abc.seconds duration") == "9 min 1 s"
    assert value("run.json runs.commit=def.seconds duration") == "2 min"
    assert value("run.json runs.commit=abc.share .0%") == "65 %"
    assert value('run.json "runs.*.share" .3f list') == "0.649"  # null is skipped
    assert value('run.json "nested.x_*.d" .2f absmax') == "0.02"
    assert value("run.json nested.y.d d") == "5"
    with pytest.raises(ValueError, match="reducer"):
        value('run.json "nested.*.d" .2f')  # several values, no reducer
    with pytest.raises(KeyError):
        value("run.json nested.z.d .1f")
    with pytest.raises(ValueError, match="nothing"):
        value("runner.json rows.name=none.AP.mean .1f")


def test_an_inline_figure_is_rewritten_inside_its_line(results, monkeypatch, generate):
    page = results / "page.md"
    line = ("The run reaches <!-- generated: value runner.json rows.name=plus.AP.mean .1f -->99.9<!-- end generated --> AP "
            "after <!-- generated: value run.json runs.commit=abc.seconds duration --><!-- end generated -->.\n")  # fmt: skip
    block = "<!-- generated: table table.md -->\nold\n<!-- end generated -->\n"
    page.write_text(line + block)
    monkeypatch.setattr(generate, "pages", lambda: [page])
    monkeypatch.setattr(generate, "REPO", results)
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0
    assert page.read_text() == (
        "The run reaches <!-- generated: value runner.json rows.name=plus.AP.mean .1f -->13.2<!-- end generated --> AP "
        "after <!-- generated: value run.json runs.commit=abc.seconds duration -->9 min 1 s<!-- end generated -->.\n"
        "<!-- generated: table table.md -->\n| config | AP | ΔAP | s/iter |\n|---|---|---|---|\n"
        "| a | 34.1 | +0.0 | 0.600 |\n| b | 35.1 | +0.9 | 0.610 |\n| other | x |\n|---|---|\n| c | 1 |\n"
        "<!-- end generated -->\n")  # fmt: skip
    page.write_text("A table inside a line: <!-- generated: table table.md --><!-- end generated -->\n")
    with pytest.raises(ValueError, match="several lines"):
        generate.main(["--check"])


def test_paired_steps_pairs_every_metric_by_seed(results, generate):
    lines = generate.block_text("paired_steps runner.json").splitlines()
    assert lines[0] == "| step | seeds | AP | AP50 | AP75 | APs | APm | APl | ΔAP per seed |"
    # AP: differences 2.0, 2.5, 2.0: mean 2.17, sample std 0.29, t = 13.0 with 2 df (p = 0.006): beyond noise.
    # APs: 1.0, -1.0, 0.5: mean 0.17, std 1.04: not. The others do not move.
    assert lines[2] == ("| `base` → `plus` | 1, 2, 3 | **+2.2 ± 0.3** | +0.0 ± 0.0 | +0.0 ± 0.0 | +0.2 ± 1.0 | "
                        "+0.0 ± 0.0 | +0.0 ± 0.0 | +2.0 / +2.5 / +2.0 |")  # fmt: skip


def test_grad_shares_average_the_second_half_then_the_seeds(results, generate):
    for seed, values in ((1, [0.9, 0.8, 0.5, 0.3]), (2, [0.9, 0.8, 0.6, 0.4])):
        folder = results / "run" / f"seed_{seed}"
        folder.mkdir(parents=True)
        records = [{"iteration": 20 * i + 19, "box_reg/inlier_grad_share": v, "box_reg/inlier_share": 2 * v}
                   for i, v in enumerate(values)]  # fmt: skip
        (folder / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    # second halves (iterations 59 and 79): 0.4 and 0.5, mean 0.45, sample std 0.0707; the RoIs' share twice that
    assert generate.block_text("grad_shares run").splitlines()[2] == \
        "| `run` | 1, 2 | 59–79 | 0.450 ± 0.071 | 0.900 ± 0.141 | 0.50 |"


def test_inlier_gradients_group_the_seeds_of_each_model(results, generate):
    runs = [{"label": f"row c, seed {seed}", "run": f"docs/results/runs/model_c/seed_{seed}", "rois": rois,
             "inlier_share": share, "smooth_l1_grad_share": 0.6, "balanced_l1_grad_share": 0.7,
             "balanced_l1_own_inlier_share": 0.5, "balanced_l1_own_grad_share": 0.4}
            for seed, rois, share in ((7, 100.0, 0.8), (8, 120.0, 0.9))]  # fmt: skip
    (results / "shares.json").write_text(json.dumps(runs))
    assert generate.block_text("inlier_gradients shares.json").splitlines()[2] == (
        "| row c (`model_c`), seeds 7, 8 | 100, 120 | 0.850 ± 0.071 | 0.600 ± 0.000 | **0.700 ± 0.000** | "
        "0.500 ± 0.000 / 0.400 ± 0.000 |")  # fmt: skip


def test_resume_position_writes_one_row_per_layout_and_iteration(results, generate):
    (results / "resume.json").write_text(json.dumps({
        "records": 117266, "loader_build_seconds": 0.7234, "repeats": 5, "date": "2026-12-07",
        "environment": {"cpu": "AMD EPYC", "torch_threads": 2, "torch": "2.14.1", "git_commit": "abc1234"},
        "restore": [{"processes": 1, "images_per_process": 16, "iteration": 10000, "seconds": 0.0317},
                    {"processes": 8, "images_per_process": 2, "iteration": 90000, "seconds": 1.23456}]}))  # fmt: skip
    lines = generate.block_text("resume_position resume.json").splitlines()
    assert lines[2:4] == ["| 1 x 16 | 10,000 | 0.032 |", "| 8 x 2 | 90,000 | 1.235 |"]
    assert lines[5].startswith("Median of 5, 117,266 records, on AMD EPYC (2 threads, torch 2.14.1), 2026-12-07, "
                               "commit abc1234; reading the records' orientation when the loader is built took 0.72 s.")  # fmt: skip


def test_a_report_is_copied_with_its_headings_one_level_deeper(results, generate):
    (results / "report.md").write_text("Measured on a CPU.\n\n## Tables\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n")
    assert generate.block_text("report report.md") == "Measured on a CPU.\n\n### Tables\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    # The benchmark page shows the committed report of `python -m benchmarks`, all of it.
    page = (REPO / "docs" / "benchmarks.md").read_text()
    assert "<!-- generated: report ../benchmarks/results/results.md -->" in page


def test_same_rows_compares_runs_of_the_same_config_by_welchs_test(results, generate):
    def runner(*rows):
        return {"rows": [{"name": n, "per_seed": {"AP": dict(zip("789", aps))}} for n, aps in rows]}

    (results / "one.json").write_text(json.dumps(runner(("a", [30.0, 31.0, 32.0]), ("b", [40.0, 40.5, 41.0]))))
    (results / "two.json").write_text(json.dumps(runner(("a2", [31.0, 32.0, 33.0]))))
    for seed, ap in zip("789", [30.0, 30.5, 31.0]):
        (results / "runs" / "b2" / f"seed_{seed}").mkdir(parents=True)
        (results / "runs" / "b2" / f"seed_{seed}" / "result.json").write_text(json.dumps({"AP": ap}))
    lines = generate.block_text("same_rows one.json#a=two.json#a2 one.json#b=runs/b2").splitlines()
    # Row a: 31.0 ± 1.0 against 32.0 ± 1.0: t = -1 / sqrt(2/3), df = 4, p = 0.29. Row b: 10 points apart.
    assert lines[2] == "| `a` / `a2` | 31.0 ± 1.0 | 32.0 ± 1.0 | -1.0 | 0.29 | yes |"
    assert lines[3].startswith("| `b` / `b2` | 40.5 ± 0.5 | 30.5 ± 0.5 | +10.0 | 0.00 | **no** |")
    with pytest.raises(KeyError, match="two.json has no row 'b2'; its rows: a2"):
        generate.block_text("same_rows one.json#b=two.json#b2")


def test_a_g_format_writes_units_of_a_billion(generate):
    assert generate._format(10132684800, "G.2f") == "10.13"
    assert generate._format("211450000000", "G.1f") == "211.4"


def test_an_unknown_block_is_refused_naming_the_known_ones(generate):
    with pytest.raises(KeyError, match=r"unknown generated block 'nope x'.*table \.\.\., .*same_rows \.\.\., .*demo_ap"):
        generate.block_text("nope x")
