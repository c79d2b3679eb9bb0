"""Training model = backbone + MarginSoftmax; the embedding model shares its weights."""

import keras
import numpy as np
import pytest

from keras_sphereface.backbones import get_backbone
from keras_sphereface.errors import UserInputError
from keras_sphereface.models import build_training_model, embedding_model, load_embedding_model


def tiny_training_model(mode="cosface", num_classes=5):
    backbone = get_backbone("sphere4", width_multiplier=0.125, embedding_dim=8)
    return build_training_model(backbone, num_classes, mode=mode)


def pixels(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 96, 3)).astype("uint8")


@pytest.mark.multi_backend
def test_inputs_outputs_and_shared_weights():
    model = tiny_training_model()
    assert set(model.input) == {"images", "labels"}
    logits = model({"images": pixels(), "labels": np.array([0, 1, 2, 3])})
    assert tuple(logits.shape) == (4, 5)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    backbone = embedding_model(model)
    assert backbone.name == "sphere4" and embedding_model(backbone) is backbone
    # the embedding model is a part of the training model, not a copy
    fc5 = model.get_layer("sphere4").get_layer("fc5")
    fc5.kernel.assign(np.zeros(fc5.kernel.shape, "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(backbone(pixels())), 0.0)


@pytest.mark.multi_backend
def test_logits_without_margin_are_scaled_cosines():
    """CosFace logits with labels of another class than any row: s·cos θ_j, computed in NumPy."""
    model = tiny_training_model(mode="cosface")
    images = pixels()
    features = keras.ops.convert_to_numpy(embedding_model(model)(images)).astype("float64")
    kernel = keras.ops.convert_to_numpy(model.get_layer("margin_softmax").kernel).astype("float64")
    head = model.get_layer("margin_softmax")
    cosines = (features / np.linalg.norm(features, axis=1, keepdims=True)) @ (
        kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    )
    plain = keras.ops.convert_to_numpy(head(embedding_model(model)(images)))
    np.testing.assert_allclose(plain, head.scale * cosines, rtol=1e-4, atol=1e-4)


def test_round_trip_and_load_embedding_model(tmp_path):
    model = tiny_training_model(mode="sphereface")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    inputs = {"images": pixels(), "labels": np.array([0, 1, 2, 3])}
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(inputs)), keras.ops.convert_to_numpy(model(inputs)), atol=1e-5
    )
    embedder = load_embedding_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(embedder(pixels())),
        keras.ops.convert_to_numpy(embedding_model(model)(pixels())),
        atol=1e-6,
    )
    # a run directory holding checkpoint.keras works the same
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(run_dir / "checkpoint.keras")
    assert load_embedding_model(run_dir).name == "sphere4"


def test_backbone_by_name():
    model = build_training_model("sphere4", 3, mode="softmax")
    assert embedding_model(model).count_params() == 12_562_496


@pytest.mark.parametrize("name", ["missing.keras", "empty_dir", "model.h5"])
def test_load_embedding_model_bad_path(tmp_path, name):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(UserInputError, match="Expected a .keras model file"):
        load_embedding_model(tmp_path / name)
