"""Embedding extraction: flip fusion, the .npz cache, resuming after a kill."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from keras_sphereface.errors import UserInputError
from keras_sphereface.evaluation.extract import (
    embed_batch,
    extract_embeddings,
    load_embedder,
    load_embeddings_file,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FirstPixels:
    """A fake embedder: the first 5 values of each image (the mirror gives other values)."""

    input_size = (8, 6)

    def __init__(self):
        self.images_seen = 0

    def __call__(self, images):
        self.images_seen += len(images)
        return images.reshape(len(images), -1)[:, :5].astype(np.float32)


def _make_crops(root, count, size=(8, 6)):
    rng = np.random.default_rng(0)
    relpaths = []
    for i in range(count):
        relpath = f"P{i % 3}/P{i % 3}_{i + 1:04d}.png"
        os.makedirs(root / f"P{i % 3}", exist_ok=True)
        cv2.imwrite(str(root / relpath), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        relpaths.append(relpath)
    return relpaths


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_flip_fusion(fusion):
    images = np.random.default_rng(1).integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    plain = images.reshape(3, -1)[:, :5].astype(np.float32)
    mirrored = images[:, :, ::-1].reshape(3, -1)[:, :5].astype(np.float32)
    expected = np.hstack([plain, mirrored]) if fusion == "concat" else plain + mirrored
    np.testing.assert_array_equal(embed_batch(FirstPixels(), images, True, fusion), expected)
    np.testing.assert_array_equal(embed_batch(FirstPixels(), images, False, fusion), plain)


def test_extract_reads_rgb_and_uses_the_cache(tmp_path):
    relpaths = _make_crops(tmp_path / "images", 7)
    cache = tmp_path / "cache.npz"
    embedder = FirstPixels()
    embeddings, info = extract_embeddings(
        embedder, relpaths, tmp_path / "images", flip=False, batch_size=3, cache_path=cache,
        progress=False,
    )
    for relpath in relpaths:
        expected = _rgb(tmp_path / "images" / relpath).reshape(-1)[:5]
        np.testing.assert_array_equal(embeddings[relpath], expected)
    assert info["images_computed"] == 7 and embedder.images_seen == 7
    stored, settings = load_embeddings_file(cache)
    assert sorted(stored) == sorted(relpaths) and settings["flip"] is False

    again = FirstPixels()
    cached, info = extract_embeddings(
        again, relpaths, tmp_path / "images", flip=False, cache_path=cache, progress=False
    )
    assert again.images_seen == 0 and info["images_from_cache"] == 7
    for relpath in relpaths:
        np.testing.assert_array_equal(cached[relpath], embeddings[relpath])

    with pytest.raises(UserInputError, match="same model and settings"):
        extract_embeddings(FirstPixels(), relpaths, tmp_path / "images", flip=True,
                           cache_path=cache, progress=False)


def test_unaligned_image_without_landmarks_is_an_error(tmp_path):
    relpaths = _make_crops(tmp_path, 1, size=(10, 10))
    with pytest.raises(UserInputError, match="8x6") as error:
        extract_embeddings(FirstPixels(), relpaths, tmp_path, progress=False)
    assert relpaths[0] in str(error.value)


def test_unknown_model_path_is_an_error(tmp_path):
    with pytest.raises(UserInputError, match=".tflite"):
        load_embedder(tmp_path / "model.onnx")


def test_resume_after_kill(tmp_path):
    relpaths = _make_crops(tmp_path / "images", 24)
    cache = tmp_path / "cache.npz"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {REPO_ROOT!r})
        import numpy as np
        from keras_sphereface.evaluation.extract import extract_embeddings

        class Slow:
            input_size = (8, 6)
            def __call__(self, images):
                time.sleep(0.3)
                return images.reshape(len(images), -1)[:, :5].astype(np.float32)

        extract_embeddings(Slow(), {relpaths!r}, {str(tmp_path / "images")!r}, batch_size=2,
                           cache_path={str(cache)!r}, save_every=0.0, progress=False)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while time.time() < deadline and process.poll() is None:
            if cache.exists() and len(load_embeddings_file(cache)[0]) >= 4:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the extraction finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    partial, _ = load_embeddings_file(cache)  # a kill leaves a readable cache
    assert 4 <= len(partial) < 24

    resumed = FirstPixels()
    embeddings, info = extract_embeddings(
        resumed, relpaths, tmp_path / "images", batch_size=2, cache_path=cache, progress=False
    )
    assert info["images_from_cache"] == len(partial)
    assert resumed.images_seen == 2 * (24 - len(partial))  # image + mirror
    fresh, _ = extract_embeddings(FirstPixels(), relpaths, tmp_path / "images", progress=False)
    for relpath in relpaths:
        np.testing.assert_array_equal(embeddings[relpath], fresh[relpath])


@pytest.mark.slow
def test_load_embedder_dispatches_every_model_format(tmp_path):
    """.keras, SavedModel export dir, its version dir and .tflite give the same directions."""
    keras = pytest.importorskip("keras")
    backbones = pytest.importorskip("keras_sphereface.backbones")
    pytest.importorskip("keras_sphereface.models")
    export = pytest.importorskip("keras_sphereface.export")
    keras.utils.set_random_seed(0)
    model = backbones.get_backbone("sphere4", width_multiplier=0.125, embedding_dim=16)
    model.save(tmp_path / "tiny.keras")
    export.export_saved_model(model, tmp_path / "serving")
    export.export_tflite(model, tmp_path / "tiny.tflite")
    images = np.random.default_rng(0).integers(0, 256, (3, 112, 96, 3), dtype=np.uint8)
    reference = np.asarray(model(images.astype(np.float32)))
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    for path in ["tiny.keras", "serving", "serving/1", "tiny.tflite"]:
        embedder = load_embedder(tmp_path / path)
        assert tuple(embedder.input_size) == (112, 96)
        output = embedder(images)
        assert output.shape == (3, 16) and output.dtype == np.float32
        output = output / np.linalg.norm(output, axis=1, keepdims=True)
        np.testing.assert_allclose(output, reference, atol=1e-4, err_msg=path)


def test_images_without_landmarks_use_the_fallback_and_are_listed(tmp_path):
    relpaths = _make_crops(tmp_path, 3, size=(60, 50))
    embedder = FirstPixels()
    embedder.input_size = (112, 96)
    # The template itself, scaled by 1/2: the warp is a plain 2x zoom of the top-left corner.
    from keras_sphereface.alignment.warp import template_for

    landmarks = {relpaths[0]: template_for((112, 96)) / 2}
    embeddings, info = extract_embeddings(
        embedder, relpaths, tmp_path, landmarks=landmarks, flip=False, progress=False
    )
    assert info["fallback_alignment"] == sorted(relpaths[1:])
    image = _rgb(tmp_path / relpaths[0]).astype(np.float32)
    # Crop pixel (0, 0) is image pixel (0, 0); crop pixel (0, 1) is image x = 0.5.
    expected = np.r_[image[0, 0], (image[0, 0, :2] + image[0, 1, :2]) / 2]
    np.testing.assert_allclose(embeddings[relpaths[0]], expected, atol=1)

    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserInputError, match="broken.jpg"):
        extract_embeddings(embedder, ["broken.jpg"], tmp_path, landmarks=landmarks,
                           progress=False)
