"""TFLite export and the LiteRT embedder: parity per quantization on real LFW faces."""

import os

import numpy as np
import pytest
from export_test_utils import EMBEDDING_DIM, build_tiny_backbone

from keras_sphereface.errors import UserInputError
from keras_sphereface.export import LiteRTEmbedder, export_tflite

# Minimum cosine to the Keras embedding (issue #7) per quantization mode.
MIN_COSINE = {"none": 0.99999, "float16": 0.9999, "dynamic": 0.99, "int8": 0.99}


def cosines(reference, candidate):
    """Row-wise cosine, computed independently of the code under test."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return np.sum(reference * candidate, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    )


@pytest.fixture(scope="module")
def tflite_files(backbone, calibration_faces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    return {
        mode: export_tflite(
            backbone,
            folder / f"model_{mode}.tflite",
            quantization=mode,
            representative_images=calibration_faces if mode == "int8" else None,
        )
        for mode in MIN_COSINE
    }


@pytest.mark.parametrize("mode", list(MIN_COSINE))
def test_parity_on_real_lfw_faces(tflite_files, mode, parity_faces, keras_reference):
    embedder = LiteRTEmbedder(tflite_files[mode])
    assert embedder.input_size == (112, 96)
    out = embedder(parity_faces)
    assert out.dtype == np.float32 and out.shape == (len(parity_faces), EMBEDDING_DIM)
    assert cosines(keras_reference(parity_faces), out).min() >= MIN_COSINE[mode]


def test_quantization_shrinks_the_file(tflite_files, backbone):
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in backbone.weights)
    size = {mode: os.path.getsize(path) for mode, path in tflite_files.items()}
    assert weight_bytes <= size["none"] < 1.2 * weight_bytes
    assert size["float16"] < 0.6 * size["none"]
    assert size["dynamic"] < 0.35 * size["none"]
    assert size["int8"] < 0.35 * size["none"]


def test_batch_size_can_change_between_calls(tflite_files, parity_faces, keras_reference):
    embedder = LiteRTEmbedder(tflite_files["none"])
    single = embedder(parity_faces[:1])
    batch = embedder(parity_faces)
    np.testing.assert_allclose(single[0], batch[0], atol=1e-5)
    assert cosines(keras_reference(parity_faces[:3]), embedder(parity_faces[:3])).min() >= 0.99999


def test_never_overwrites_without_permission(backbone, tflite_files, parity_faces):
    path = tflite_files["none"]
    before = open(path, "rb").read()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_tflite(backbone, path)
    assert open(path, "rb").read() == before


def test_bad_inputs_are_user_errors(backbone, tflite_files, tmp_path):
    with pytest.raises(UserInputError, match="representative_images"):
        export_tflite(backbone, tmp_path / "a.tflite", quantization="int8")
    with pytest.raises(UserInputError, match="quantization"):
        export_tflite(backbone, tmp_path / "a.tflite", quantization="int4")
    with pytest.raises(UserInputError, match=r"\[N, 112, 96, 3\]"):
        export_tflite(
            backbone,
            tmp_path / "a.tflite",
            quantization="int8",
            representative_images=np.zeros((4, 64, 64, 3), np.uint8),
        )
    not_a_model = tmp_path / "junk.tflite"
    not_a_model.write_bytes(b"not a flatbuffer")
    with pytest.raises(UserInputError, match="junk.tflite"):
        LiteRTEmbedder(not_a_model)
    with pytest.raises(UserInputError, match="pixel values"):
        LiteRTEmbedder(tflite_files["none"])(np.full((1, 112, 96, 3), 300.0))


def test_mixed_precision_backbone_converts_in_float32(tmp_path, parity_faces):
    import keras

    from keras_sphereface.backbones import get_backbone

    keras.utils.set_random_seed(0)
    model = get_backbone(
        "sphere4", width_multiplier=0.125, embedding_dim=EMBEDDING_DIM, dtype="mixed_bfloat16"
    )
    path = export_tflite(model, tmp_path / "bf16.tflite")
    assert model.layers[-2].dtype_policy.compute_dtype == "bfloat16"  # the model is untouched
    reference = model.predict(parity_faces.astype(np.float32), verbose=0)
    # bfloat16 keeps 8 significant bits: the float32 TFLite model is at least that close
    assert cosines(reference, LiteRTEmbedder(path)(parity_faces)).min() >= 0.9995


def test_batch_norm_backbone_converts_with_its_moving_statistics(tmp_path, parity_faces):
    model = build_tiny_backbone(seed=3, batch_norm=True)
    path = export_tflite(model, tmp_path / "batch_norm.tflite")
    reference = model(parity_faces.astype(np.float32), training=False)
    assert cosines(reference, LiteRTEmbedder(path)(parity_faces)).min() >= MIN_COSINE["none"]
