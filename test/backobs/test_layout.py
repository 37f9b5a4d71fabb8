"""The layout's one rule that a number says: no module of backobs/ over 600 lines."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "backobs"


def test_no_module_over_600_lines():
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in ROOT.rglob("*.py")
    }
    assert len(lengths) > 30  # the package was found
    assert {name: n for name, n in lengths.items() if n > 600} == {}
