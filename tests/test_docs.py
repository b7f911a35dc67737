"""The README front page and the docs/ pages: length, links, and the config-key table."""
import re

import pytest

from detectron2.config import get_cfg

import libra_rcnn

from conftest import REPO

PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", REPO / "projects" / "LibraRCNN" / "README.md",
         *sorted((REPO / "docs").glob("*.md"))]  # fmt: skip
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page):
    """GitHub's heading anchors of a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for part in ("## The two commands", "make demo", "make test", "## Installation", "## Models and configs",
                 "## Components", "## Documentation"):  # fmt: skip
        assert part in text


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
