"""LFW evaluation end to end: the folder lookup, `evaluate_lfw`, and the `evaluate` CLI."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from keras_sphereface.alignment.landmarks import write_landmarks_file
from keras_sphereface.errors import UserInputError
from keras_sphereface.evaluation import evaluate_lfw, read_pairs, resolve_lfw_dir
from keras_sphereface.evaluation.extract import save_embeddings_file

REPORT_KEYS = {"accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds", "auc", "eer",
               "tar_at_far"}

# Typical 5-point positions in a 250x250 deep-funneled LFW frame (eyes, nose, mouth corners),
# chosen by hand; good enough to crop the face centre for a smoke test.
TYPICAL_LFW_LANDMARKS = np.array(
    [[104.0, 112.5], [145.6, 111.5], [125.3, 136.5], [107.1, 158.3], [144.1, 157.4]], np.float32
)


def _main():
    from cli.main import main

    return main


def _small_pair_list(lfw_dir, path, per_fold=3):
    """Two folds of `per_fold` matched + `per_fold` mismatched lines from LFW's pairs.txt."""
    lines = (lfw_dir / "pairs.txt").read_text().splitlines()
    body = []
    for fold in range(2):
        start = 1 + fold * 600
        body += lines[start : start + per_fold] + lines[start + 300 : start + 300 + per_fold]
    path.write_text("\n".join([f"2\t{per_fold}"] + body) + "\n")
    return path


def _tiny_backbone():
    import keras

    try:
        from keras_sphereface.backbones import get_backbone
    except ImportError:  # before the backbones land: any small model of the same interface
        images = keras.Input((112, 96, 3))
        x = keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0)(images)
        x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
        return keras.Model(images, keras.layers.Dense(16)(keras.layers.Flatten()(x)))
    keras.utils.set_random_seed(0)
    return get_backbone("sphere4", width_multiplier=0.125, embedding_dim=32)


@pytest.fixture(scope="module")
def small_lfw(lfw_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("small_lfw")
    pairs_path = _small_pair_list(lfw_dir, root / "pairs.txt")
    landmarks = {p: TYPICAL_LFW_LANDMARKS for p in read_pairs(pairs_path).image_paths}
    write_landmarks_file(root / "landmarks.txt", landmarks)
    return pairs_path, lfw_dir / "lfw-deepfunneled", root / "landmarks.txt"


def test_missing_lfw_dir_says_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.delenv("LFW_DIR", raising=False)
    with pytest.raises(UserInputError) as error:
        resolve_lfw_dir(tmp_path)
    message = str(error.value)
    assert "pairs.txt" in message and "lfw-deepfunneled/NAME/NAME_0001.jpg" in message
    assert str(tmp_path) in message
    monkeypatch.setenv("LFW_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(UserInputError, match="LFW_DIR"):
        resolve_lfw_dir()


def test_lfw_dir_of_pairs_alone_when_the_faces_come_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("LFW_DIR", raising=False)
    (tmp_path / "pairs.txt").write_text("10 300\n")
    assert resolve_lfw_dir(tmp_path, images=False) == tmp_path
    with pytest.raises(UserInputError, match="lacks lfw-deepfunneled$"):
        resolve_lfw_dir(tmp_path)
    (tmp_path / "pairs.txt").unlink()
    with pytest.raises(UserInputError, match="lacks pairs.txt$"):
        resolve_lfw_dir(tmp_path, images=False)


def test_lfw_dir_from_environment(lfw_dir, monkeypatch):
    monkeypatch.setenv("LFW_DIR", str(lfw_dir))
    assert resolve_lfw_dir() == lfw_dir


def test_cli_missing_lfw_dir_exits_2(tmp_path):
    result = CliRunner().invoke(
        _main(), ["evaluate", "--lfw", "--lfw-dir", str(tmp_path), "--embeddings", "x.npz"]
    )
    assert result.exit_code == 2
    assert "pairs.txt" in result.output and "Traceback" not in result.output


def test_lfw_scores_precomputed_embeddings(lfw_dir, tmp_path):
    """Identity-structured synthetic embeddings for the 7,701 images: all 6,000 pairs run."""
    pairs = read_pairs(lfw_dir / "pairs.txt")
    rng = np.random.default_rng(0)
    centres, embeddings = {}, {}
    for relpath in pairs.image_paths:
        name = relpath.split("/")[0]
        centre = centres.setdefault(name, rng.normal(size=32))
        embeddings[relpath] = (centre + 0.3 * rng.normal(size=32)).astype(np.float32)
    save_embeddings_file(tmp_path / "embeddings.npz", embeddings)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(
        _main(),
        ["evaluate", "--lfw", "--lfw-dir", str(lfw_dir), "--embeddings",
         str(tmp_path / "embeddings.npz"), "--report", str(report_path)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["num_pairs"] == 6000 and len(report["fold_accuracies"]) == 10
    assert report["accuracy_mean"] > 0.95  # same-identity vectors are much closer
    assert report["tar_at_far"]["1e-04"]["negative_pairs"] == 3000
    assert "accuracy" in result.output and "TAR@FAR=1e-03" in result.output

    missing = pairs.left[5]
    first_line = min(n for n, a, b in zip(pairs.line_numbers, pairs.left, pairs.right)
                     if missing in (a, b))
    del embeddings[missing]
    save_embeddings_file(tmp_path / "partial.npz", embeddings)
    with pytest.raises(UserInputError, match=f"line {first_line}: .*{missing}"):
        evaluate_lfw(embeddings=tmp_path / "partial.npz", lfw_dir=lfw_dir)


@pytest.mark.multi_backend  # the extraction path needs no TensorFlow
def test_evaluate_pairs_with_a_tiny_model(small_lfw, tmp_path):
    pairs_path, images_dir, landmarks = small_lfw
    model = _tiny_backbone()
    report = evaluate_lfw(
        model=model, pairs_path=pairs_path, images_dir=images_dir, landmarks=landmarks,
        fusion="sum", batch_size=5, roc_path=tmp_path / "roc.png", progress=False,
    )
    assert REPORT_KEYS <= set(report)
    assert report["num_pairs"] == 12 and len(report["thresholds"]) == 2
    assert report["embedding_dim"] == model.output_shape[-1]  # sum fusion keeps D
    assert report["extraction"]["images_computed"] == len(read_pairs(pairs_path).image_paths)
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_end_to_end_with_a_saved_tiny_model(small_lfw, tmp_path):
    pytest.importorskip("keras_sphereface.models")
    pairs_path, images_dir, landmarks = small_lfw
    model_path = tmp_path / "tiny.keras"
    _tiny_backbone().save(model_path)
    report_path, cache = tmp_path / "report.json", tmp_path / "cache.npz"
    arguments = ["evaluate", "--pairs", str(pairs_path), "--images", str(images_dir),
                 "--model", str(model_path), "--landmarks", str(landmarks), "--cache", str(cache),
                 "--report", str(report_path), "--roc", str(tmp_path / "roc.png")]
    result = CliRunner().invoke(_main(), arguments)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert REPORT_KEYS <= set(report) and report["num_pairs"] == 12
    assert os.path.getsize(tmp_path / "roc.png") > 0

    # The cache is an embeddings file: scoring it again gives the same figures.
    result = CliRunner().invoke(
        _main(), ["evaluate", "--pairs", str(pairs_path), "--embeddings", str(cache)]
    )
    assert result.exit_code == 0, result.output
    assert f"accuracy {100 * report['accuracy_mean']:.2f}%" in result.output

    # A wrong option combination is a clear error, not a traceback.
    result = CliRunner().invoke(_main(), arguments[:9] + ["--aligned"])
    assert result.exit_code == 2 and "not both" in result.output
