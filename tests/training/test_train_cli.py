"""`python cli/main.py train`: bad input → one message and exit code 2; a tiny run on a few
LFW identities aligned on the fly, then resumed for one more epoch."""

import csv
import json
import os

import pytest
from click.testing import CliRunner

from cli.main import main
from keras_sphereface.alignment.detect import fallback_landmarks
from keras_sphereface.alignment.landmarks import write_landmarks_file

TINY = ["--backbone", "sphere4", "--width-multiplier", "0.125", "--embedding-dim", "8"]


def run(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def one_identity(root):
    (root / "only_me").mkdir()
    (root / "only_me" / "a.jpg").write_bytes(b"x")
    return root


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: root, "no such images"),
        (one_identity, "at least 2 identities"),
    ],
)
def test_bad_data_gives_a_message_and_exit_code_2(tmp_path, setup, message):
    data = tmp_path / "data"
    data.mkdir()
    result = run("--data", setup(data), "--output", tmp_path / "run", *TINY)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_resume_needs_a_run_directory(tmp_path):
    result = run("--resume", "--output", tmp_path)
    assert result.exit_code == 2 and "config.json" in result.output


def test_missing_data(tmp_path):
    result = run("--output", tmp_path / "run")
    assert result.exit_code == 2 and "--data" in result.output


@pytest.mark.slow
@pytest.mark.lfw
def test_tiny_run_on_lfw_identities_then_resume(lfw_dir, tmp_path):
    """Four LFW identities (≥ 5 images each, first in name order), aligned from a landmarks
    file while training (the mean-LFW landmarks: deep-funneled faces sit at the centre)."""
    images = lfw_dir / "lfw-deepfunneled"
    data = tmp_path / "lfw_subset"
    data.mkdir()
    landmarks = {}
    chosen = 0
    for name in sorted(os.listdir(images)):
        files = sorted(os.listdir(images / name))
        if len(files) < 5:
            continue
        os.symlink(images / name, data / name)
        landmarks.update({f"{name}/{f}": fallback_landmarks((250, 250)) for f in files})
        chosen += 1
        if chosen == 4:
            break
    write_landmarks_file(tmp_path / "landmarks.txt", landmarks)
    output = tmp_path / "run"
    common = ["--output", output, "--batch-size", 8]
    first = run("--data", data, "--landmarks", tmp_path / "landmarks.txt", "--epochs", 1,
                "--weight-normalization", "projected", "--jitter", 0.05, "--batch-norm", *TINY,
                *common)
    assert first.exit_code == 0, first.output
    config = json.load(open(output / "config.json"))
    assert config["jitter"] == 0.05 and config["batch_norm"] is True
    conflict = run("--resume", "--epochs", 2, "--jitter", 0, *common)
    assert conflict.exit_code == 2 and "--jitter 0.0 (the run has 0.05)" in conflict.output
    conflict = run("--resume", "--epochs", 2, "--backbone", "sphere20", *common)
    assert conflict.exit_code == 2 and "--backbone sphere20" in conflict.output
    conflict = run("--resume", "--epochs", 2, "--weight-normalization", "reparametrized", *common)
    assert conflict.exit_code == 2 and "(the run has projected)" in conflict.output
    second = run("--resume", "--epochs", 2, *common)
    assert second.exit_code == 0, second.output
    rows = list(csv.DictReader(open(output / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["loss"]) > 0 and 0 < float(r["lambda"]) <= 1000 for r in rows)
    # the head kept its class centres at glorot's column norm sqrt(2·8 / (8 + 4)) throughout
    import keras
    import numpy as np

    trained = keras.saving.load_model(output / "checkpoint.keras")
    # --batch-norm: the backbone's batch norms were trained in training mode (moving
    # statistics moved off their initial 0 and 1)
    norms = [layer for layer in trained.get_layer("sphere4").layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 5  # 4 stage convs of sphere4 and fc5
    for layer in norms:
        assert np.abs(keras.ops.convert_to_numpy(layer.moving_mean)).max() > 0
        assert np.abs(keras.ops.convert_to_numpy(layer.moving_variance) - 1).max() > 0
    head = trained.get_layer("margin_softmax")
    assert head.weight_normalization == "projected"
    kernel = keras.ops.convert_to_numpy(head.kernel)
    assert head.centre_norm == pytest.approx(np.sqrt(2 * 8 / (8 + 4)))
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), head.centre_norm, rtol=1e-5)
