"""Shared test fixtures.

`lfw_dir`: the LFW folder (holding `pairs.txt` and `lfw-deepfunneled/`), from `LFW_DIR` or
`../shared/data/lfw` beside the checkout; tests that need it are skipped with a reason
when it is absent (a user's machine without LFW). `load_example`: imports a script of
examples/ as a module.
"""

import importlib.util
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _find_lfw():
    candidates = [os.environ.get("LFW_DIR"), REPO_ROOT.parent / "shared" / "data" / "lfw"]
    for candidate in candidates:
        if candidate and (pathlib.Path(candidate) / "lfw-deepfunneled").is_dir():
            return pathlib.Path(candidate)
    return None


@pytest.fixture(scope="session")
def lfw_dir():
    path = _find_lfw()
    if path is None:
        pytest.skip("LFW not found: set LFW_DIR to a folder with pairs.txt and lfw-deepfunneled/")
    return path


@pytest.fixture(scope="session")
def load_example():
    """load_example(NAME): examples/NAME.py imported as a module (examples/ is no package)."""

    def load(name):
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
