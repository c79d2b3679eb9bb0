"""Fixtures of the fault suite: a tiny identity folder of aligned crops and tiny models
(sphere4, width 0.125, embedding 8)."""

import pytest
from fault_utils import CROP, write_identity_folder


@pytest.fixture
def identity_folder(tmp_path):
    return write_identity_folder(tmp_path / "faces")


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """A backbone .keras file (sphere4, width 0.125, 8-D embedding, 112x96 input)."""
    from keras_sphereface.backbones import get_backbone

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    get_backbone("sphere4", input_shape=(*CROP, 3), embedding_dim=8, width_multiplier=0.125).save(
        path
    )
    return path


@pytest.fixture(scope="session")
def tiny_saved_model(tiny_model_file, tmp_path_factory):
    """The tiny backbone exported as a SavedModel export directory (version 1)."""
    import keras

    from keras_sphereface.export import export_saved_model

    export_dir = tmp_path_factory.mktemp("export") / "sm"
    export_saved_model(keras.saving.load_model(tiny_model_file), export_dir)
    return export_dir


def pytest_terminal_summary(terminalreporter):
    """The counter the hardening issue asks for: fault cases tried and how they ended."""
    outcomes = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "tests/faults/" not in getattr(report, "nodeid", ""):
                continue
            if report.when == "call" or (report.when == "setup" and outcome != "passed"):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcomes:
        counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        terminalreporter.write_line(
            f"fault suite: {sum(outcomes.values())} cases (bad inputs, damaged files, kills) "
            f"tried: {counts}"
        )
