"""Import an example script as a module (the examples are scripts, not a package)."""

import importlib.util
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"


def load_example(name):
    """Import ``example/<name>.py`` as the module ``example_<name>``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
