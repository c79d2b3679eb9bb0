"""A model trained on the JAX backend exports too: in its own JAX process (jax2tf) and as a
.keras file exported on TensorFlow. The JAX side runs in a subprocess (one backend per process)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from export_test_utils import EMBEDDING_DIM, build_tiny_backbone, unit_rows

from keras_sphereface.export import LiteRTEmbedder, export_saved_model, load_saved_model_embedder

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

TRAIN_AND_EXPORT_ON_JAX = """
import sys
sys.path[:0] = [{here!r}, {repo!r}]
import keras
import numpy as np
from export_test_utils import EMBEDDING_DIM, build_tiny_backbone
from keras_sphereface.export import export_saved_model, export_tflite

assert keras.backend.backend() == "jax", keras.backend.backend()
out = sys.argv[1]
faces = np.load(out + "/faces.npy")
model = build_tiny_backbone(seed=2)
model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
targets = np.random.default_rng(0).normal(size=(len(faces), EMBEDDING_DIM)).astype("float32")
model.fit(faces.astype("float32"), targets, batch_size=4, epochs=2, verbose=0)
np.save(out + "/reference.npy", np.asarray(model.predict(faces.astype("float32"), verbose=0)))
model.save(out + "/trained_on_jax.keras")
export_saved_model(model, out + "/exported_on_jax", version=1)
export_tflite(model, out + "/exported_on_jax.tflite")
"""


@pytest.fixture(scope="module")
def trained_on_jax(parity_faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("jax")
    np.save(out / "faces.npy", parity_faces)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_EXPORT_ON_JAX.format(here=HERE, repo=REPO_ROOT), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, unit_rows(np.load(out / "reference.npy"))


@pytest.mark.slow
def test_saved_model_exported_on_jax_serves_in_tensorflow(trained_on_jax, parity_faces):
    out, reference = trained_on_jax
    loaded = tf.saved_model.load(str(out / "exported_on_jax" / "1"))
    assert {"serving_default", "serving_flip"} <= set(loaded.signatures)
    result = loaded.signatures["serving_default"](images=tf.constant(parity_faces))
    assert result["embeddings"].shape == (len(parity_faces), EMBEDDING_DIM)
    assert np.max(np.abs(result["embeddings"].numpy() - reference)) <= 1e-5
    embedder = load_saved_model_embedder(out / "exported_on_jax")
    assert np.max(np.abs(embedder(parity_faces) - reference)) <= 1e-5
    # both signatures share one copy of the variables
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in build_tiny_backbone().weights)
    variables_dir = out / "exported_on_jax" / "1" / "variables"
    stored = sum(f.stat().st_size for f in variables_dir.glob("variables.data*"))
    assert weight_bytes <= stored < 1.1 * weight_bytes


@pytest.mark.slow
def test_tflite_exported_on_jax(trained_on_jax, parity_faces):
    out, reference = trained_on_jax
    embedder = LiteRTEmbedder(out / "exported_on_jax.tflite")
    assert np.min(np.sum(unit_rows(embedder(parity_faces)) * reference, axis=1)) >= 0.99999


@pytest.mark.slow
def test_keras_file_trained_on_jax_exports_on_tensorflow(trained_on_jax, parity_faces, tmp_path):
    import keras

    out, reference = trained_on_jax
    model = keras.saving.load_model(out / "trained_on_jax.keras", compile=False)
    version_dir = export_saved_model(model, tmp_path / "exported_on_tf")
    embeddings = load_saved_model_embedder(version_dir)(parity_faces)
    assert np.max(np.abs(embeddings - reference)) <= 1e-5
