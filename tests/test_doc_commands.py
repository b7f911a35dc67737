"""Every command the README and docs/ tell users to run exists, with every flag they give it: each
`python -m MODULE` and `python SCRIPT.py` line of their code blocks is collected, and each flag is
looked up in the command's own --help."""
import re
import subprocess
import sys
from collections import defaultdict

import pytest

from conftest import DOC_PAGES, REPO
# A command: `python -m package.module` or `python path/script.py` (any interpreter path before it).
COMMAND = re.compile(r"(?:^|\s)(?:\S*/)?python3?\s+(?:-W\s+\S+\s+)?(-m\s+[\w.]+|[\w./-]+\.py)(?=\s|$)(.*)")
NOT_OURS = {"-m pytest", "-m pip", "-m venv", "-m torch.distributed.run"}


def code_lines(text: str):
    """The lines of the fenced code blocks, with backslash continuations joined."""
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        yield from block.replace("\\\n", " ").splitlines()


def documented_commands():
    """{command: {flag: [page, ...]}} over every page."""
    found = defaultdict(lambda: defaultdict(list))
    for page in DOC_PAGES:
        for line in code_lines(page.read_text()):
            line = line.split("#")[0]
            for match in COMMAND.finditer(line):
                command = " ".join(match.group(1).split())
                if command in NOT_OURS:
                    continue
                if command.endswith(".py") and not (REPO / command).exists():  # /path/to/train_net.py
                    command = command.rsplit("/", 1)[-1]
                flags = found[command]
                for flag in re.findall(r"(?:^|\s)(--[a-z][\w-]*)", match.group(2)):
                    flags[flag].append(page.name)
                flags.setdefault("--help", [])
    return found


COMMANDS = documented_commands()


def test_the_pages_document_the_projects_commands():
    names = set(COMMANDS)
    for expected in ("train_net.py", "-m libra_rcnn.predict", "-m libra_rcnn.export", "-m libra_rcnn.ablation",
                     "-m libra_rcnn.convert_mmdet", "-m libra_rcnn.data", "-m benchmarks"):
        assert expected in names, sorted(names)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: c.replace("-m ", ""))
def test_documented_flags_exist(command):
    argv = [sys.executable, *command.split(), "--help"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, f"{command} --help: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    helped = set(re.findall(r"--[a-z][\w-]*", proc.stdout))
    missing = {flag: pages for flag, pages in COMMANDS[command].items() if flag not in helped}
    assert not missing, f"{command}: flags the docs give but --help does not know: {missing}"
