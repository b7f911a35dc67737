"""The figures the docs quote are generated from the committed results (docs/generate.py, make docs):
every generated block equals what the results give, and a hand edit is caught."""
import subprocess
import sys

from conftest import REPO


def check(*args):
    return subprocess.run([sys.executable, str(REPO / "docs" / "generate.py"), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_every_generated_block_matches_the_committed_results():
    proc = check("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_hand_edited_figure_is_caught(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "docs"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    page = tmp_path / "page.md"
    body = generate.block_text("table2_decomposition")
    assert "| d → e |" in body and "| a → e |" in body
    page.write_text(f"<!-- generated: table2_decomposition -->\n{body.replace(' ± ', ' ± 9', 1)}<!-- end generated -->\n")
    monkeypatch.setattr(generate, "pages", lambda: [page])
    monkeypatch.setattr(generate, "REPO", tmp_path)
    assert generate.main(["--check"]) == 1
    assert generate.main([]) == 0 and generate.main(["--check"]) == 0
    assert body in page.read_text()
