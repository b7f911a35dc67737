"""The README front page and the docs/ pages: length, links, and the config-key table."""
import re
import subprocess

import pytest

from detectron2.config import get_cfg

import libra_rcnn

from conftest import DOC_PAGES, REPO

PAGES = [*DOC_PAGES, REPO / "projects" / "LibraRCNN" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page):
    """GitHub's heading anchors of a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 200
    for part in ("## Quickstart for Detectron2 users", "## The two commands", "make demo", "make test",
                 "## Installation", "## Models and configs", "## Components", "## Documentation"):  # fmt: skip
        assert part in text
    quickstart = text.split("## Quickstart for Detectron2 users")[1].split("## ")[0]
    assert len(quickstart.strip().splitlines()) <= 10, quickstart
    assert text.index("## Quickstart") < text.index("## The two commands") < text.index("## Installation")


def linked_pages(page):
    return {(page.parent / target.partition("#")[0]).resolve() for target in LINK.findall(page.read_text())
            if "://" not in target and not target.startswith("#")}  # fmt: skip


def test_the_index_links_every_guide_and_every_report():
    """The README's documentation index names every page of docs/, and the reports' index every report."""
    from_readme = linked_pages(REPO / "README.md")
    reports = REPO / "docs" / "reports"
    assert {p.resolve() for p in (REPO / "docs").glob("*.md")} <= from_readme
    assert (reports / "README.md").resolve() in from_readme
    assert {p.resolve() for p in reports.glob("*.md") if p.name != "README.md"} <= linked_pages(reports / "README.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    for target in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.relative_to(REPO)}: link to {target} does not resolve"
        if anchor:
            where = f"{page.relative_to(REPO)}: no heading for #{anchor} in {path or page.name}"
            assert anchor in anchors(linked), where


def test_config_key_page_covers_every_key():
    cfg = get_cfg()
    libra_rcnn.add_libra_config(cfg)

    def keys(node, prefix):
        for name, value in node.items():
            yield from keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]

    table = (REPO / "docs" / "config_keys.md").read_text()
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `MODEL.LIBRA.")]
    documented = set()
    for cell in rows:  # "`MODEL.LIBRA.FSAF.CLS_LOSS_WEIGHT`, `BOX_LOSS_WEIGHT`": the second shares the prefix
        names = re.findall(r"`([A-Z0-9_.]+)`", cell)
        prefix = names[0].rsplit(".", 1)[0]
        documented |= {names[0]} | {f"{prefix}.{n}" for n in names[1:]}
    assert documented == set(keys(cfg.MODEL.LIBRA, "MODEL.LIBRA."))


# The repository stands alone: the method page it cites is its own docs/methods.md. Spelled in pieces so
# that this file does not match itself.
OUTSIDE_REFERENCES = ("METHODS" + ".md", "../" + "shared")
METHODS_PAGE = REPO / "docs" / "methods.md"
METHODS_CITATION = re.compile(r"(?<![\w-])methods\.md#([\w\-]+)")  # docs/methods.md#..., ../docs/..., methods.md#...


def repository_files():
    """The repository's files as a clone would have them: tracked ones, and untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in sorted(set(listed.decode().split("\0"))) if name and (REPO / name).is_file()]


def test_no_file_cites_a_page_outside_the_repository():
    offenders = []
    for path in repository_files():
        data = path.read_bytes()
        offenders += [f"{path.relative_to(REPO)}: {ref}" for ref in OUTSIDE_REFERENCES if ref.encode() in data]
        if re.search(r"methods\.md \u00a7", data.decode("utf-8", errors="ignore")):  # an old "§N" section number
            offenders.append(f"{path.relative_to(REPO)}: methods.md \u00a7N instead of an anchor")
    assert not offenders, "\n".join(offenders)


def test_every_cited_methods_section_exists():
    headings = anchors(METHODS_PAGE)
    assert {"iou-balanced-sampling", "balanced-feature-pyramid", "balanced-l1-loss", "fsaf"} <= headings
    missing = []
    for path in repository_files():
        text = path.read_bytes().decode("utf-8", errors="ignore")
        missing += [f"{path.relative_to(REPO)}: #{a}" for a in METHODS_CITATION.findall(text) if a not in headings]
    assert not missing, "no such heading in docs/methods.md:\n" + "\n".join(sorted(set(missing)))


def test_scripts_the_pages_tell_to_run_are_in_the_repository():
    for page in PAGES:
        for script in re.findall(r"\bbash ([\w./-]+\.sh)\b", page.read_text()):
            assert (REPO / script).is_file(), f"{page.relative_to(REPO)}: bash {script}: no such file here"


def test_the_wheelhouse_script_explains_the_offline_install():
    run = subprocess.run(["bash", "benchmarks/gpu/wheelhouse.sh", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "--no-index" in run.stdout and "benchmarks/gpu/run.sh" in run.stdout
