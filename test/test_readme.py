"""Every README.org block marked runnable runs as written and prints what the README shows.

A source block takes part when its header says so, e.g.::

    #+BEGIN_SRC bash :runnable yes
      python example/supported.py
    #+END_SRC

(``:eval yes`` counts too). Further header arguments, which org-babel ignores:
``:exit N`` (the block is expected to end with exit code ``N``, default 0), ``:slow yes``
(the case is marked ``slow`` and runs with ``make test-all`` only) and ``:timeout S``.
``bash`` blocks run with ``bash -e -c``, ``python`` blocks with this interpreter, each in a
fresh subprocess from the repository root, with this interpreter's directory first on
``PATH``, output unbuffered, stderr merged into stdout, no GPU (``CUDA_VISIBLE_DEVICES=""``,
so that printed tensors look the same on every machine) and ``BACKOBS_SYNTHETIC_DATA``
unset unless the block sets it.

Two kinds of commands are left out on purpose:

- ``make test``: the quickstart's second command runs this very suite; running it from
  inside the suite would recurse;
- ``pip install ...`` (alone on a line or before ``&&``): the environment that runs the tests
  is already installed (``make test`` installs first), and reinstalling would cost minutes
  and need the package index.

When a ``#+RESULTS:`` block follows (an example block, or raw lines up to a blank line), each
of its non-empty lines must appear, in order, as a whole line of the real output; ``...`` in
a README line stands for any text (dates, long paths).
"""

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.org"

_BEGIN = re.compile(r"^\s*#\+begin_src\s+(\S+)(.*)$", re.IGNORECASE)
_END = re.compile(r"^\s*#\+end_src\s*$", re.IGNORECASE)
_PIP_INSTALL = re.compile(r"^pip install\b[^&]*(&&\s*)?")


@dataclass
class Block:
    language: str
    header: Dict[str, str]
    source: str
    line: int
    expected: List[str] = field(default_factory=list)

    @property
    def runnable(self) -> bool:
        return "yes" in (self.header.get("runnable"), self.header.get("eval"))

    @property
    def id(self) -> str:
        first = next(line for line in self.commands().splitlines() if line.strip())
        return f"line{self.line}-{first.strip()[:50]}"

    def commands(self) -> str:
        """The source without ``make test`` and ``pip install`` (see the module docstring)."""
        if self.language != "bash":
            return self.source
        kept = []
        for line in self.source.splitlines():
            stripped = _PIP_INSTALL.sub("", line.strip())
            if stripped == "make test" or (not stripped and line.strip()):
                continue
            kept.append(stripped if stripped != line.strip() else line)
        return "\n".join(kept)


def _header(text: str) -> Dict[str, str]:
    tokens = text.split()
    return {
        token[1:]: (
            tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith(":") else ""
        )
        for i, token in enumerate(tokens)
        if token.startswith(":")
    }


def _unescape(line: str) -> str:
    """Undo org's comma escape of lines starting with ``*`` or ``#+`` inside blocks."""
    return re.sub(r"^(\s*),(\*|#\+)", r"\1\2", line)


def _results(lines: List[str], start: int) -> List[str]:
    """The lines of the ``#+RESULTS:`` block right after line ``start``, if there is one."""
    index = start
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines) or lines[index].strip().lower() != "#+results:":
        return []
    index += 1
    if index < len(lines) and lines[index].strip().lower() == "#+begin_example":
        end = next(
            j for j in range(index + 1, len(lines)) if lines[j].strip().lower() == "#+end_example"
        )
        body = lines[index + 1 : end]
    else:
        end = next((j for j in range(index, len(lines)) if not lines[j].strip()), len(lines))
        body = [line[2:] if line.strip().startswith(": ") else line for line in lines[index:end]]
    body = textwrap.dedent("\n".join(_unescape(line) for line in body)).splitlines()
    return [line.rstrip() for line in body if line.strip()]


def parse_blocks(text: str) -> List[Block]:
    """All source blocks of an org document, with the results shown after each."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = _BEGIN.match(lines[index])
        if not match:
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if _END.match(lines[j]))
        source = textwrap.dedent("\n".join(_unescape(x) for x in lines[index + 1 : end]))
        block = Block(match.group(1).lower(), _header(match.group(2)), source, index + 1)
        block.expected = _results(lines, end + 1)
        blocks.append(block)
        index = end + 1
    return blocks


def _pattern(line: str) -> "re.Pattern":
    return re.compile(".*".join(re.escape(part) for part in line.split("...")))


def missing_lines(expected: List[str], output: str) -> List[str]:
    """The README lines not found, in order, among the output's lines."""
    actual = [line.rstrip() for line in output.splitlines()]
    position, missing = 0, []
    for line in expected:
        pattern = _pattern(line)
        for j in range(position, len(actual)):
            if pattern.fullmatch(actual[j]):
                position = j + 1
                break
        else:
            missing.append(line)
    return missing


def _cases():
    blocks = [b for b in parse_blocks(README.read_text(encoding="utf-8")) if b.runnable]
    return [
        pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.header.get("slow") == "yes" else [])
        for b in blocks
    ]


def test_readme_has_runnable_blocks():
    blocks = parse_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.runnable]
    assert len(runnable) >= 5
    quickstart = runnable[0].source.splitlines()
    assert quickstart == [
        "pip install -e . && python example/run.py mnist_logreg --lr 0.1 --synthetic-data",
        "make test",
    ]


def test_commands_left_out():
    block = Block("bash", {}, "pip install -e . && python a.py\nmake test\npip install x\n", 1)
    assert block.commands() == "python a.py"


def test_missing_lines_matches_in_order_with_wildcards():
    output = "a 1\n[x] Results: /tmp/q/r.json\nb\n"
    assert missing_lines(["a 1", "[x] Results: .../r.json", "b"], output) == []
    assert missing_lines(["b", "a 1"], output) == ["a 1"]


@pytest.mark.parametrize("block", _cases())
def test_readme_block(block):
    environment = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    environment.pop("BACKOBS_SYNTHETIC_DATA", None)
    environment["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environment["PATH"]
    if block.language == "bash":
        command = ["bash", "-e", "-c", block.commands()]
    elif block.language == "python":
        command = [sys.executable, "-c", block.commands()]
    else:
        pytest.fail(f"README block at line {block.line}: cannot run {block.language!r} blocks")
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=float(block.header.get("timeout", 120)),
    )
    expected_code = int(block.header.get("exit", 0))
    assert result.returncode == expected_code, (
        f"README line {block.line}: exit code {result.returncode}, expected {expected_code}\n"
        f"{result.stdout[-3000:]}"
    )
    expected = block.expected
    mnist = ROOT / "data_deepobs" / "MNIST"
    if mnist.is_dir() and any(path.is_file() for path in mnist.rglob("*")):
        # The fallback line is printed only when the MNIST files are missing; a developer
        # may have them (a failed download leaves empty folders, which do not count).
        expected = [line for line in expected if "is not available here" not in line]
    missing = missing_lines(expected, result.stdout)
    assert not missing, (
        f"README line {block.line}: these lines are not in the real output:\n"
        + "\n".join(missing)
        + f"\n--- real output ---\n{result.stdout[-5000:]}"
    )
