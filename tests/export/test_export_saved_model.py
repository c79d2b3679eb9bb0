"""SavedModel export: TF Serving layout, signatures, parity on real faces, versions, safety."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from export_test_utils import EMBEDDING_DIM, build_tiny_backbone, unit_rows

from keras_sphereface.errors import UserInputError
from keras_sphereface.export import export_saved_model, load_saved_model_embedder

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def exported(backbone, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("saved_model") / "sphereface"
    version_dir = export_saved_model(backbone, export_dir, version=1)
    return export_dir, version_dir


def test_tf_serving_layout_and_named_signatures(exported):
    export_dir, version_dir = exported
    assert version_dir == os.path.join(str(export_dir), "1")
    assert sorted(os.listdir(export_dir)) == ["1"]  # no temporary directory left behind
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.isfile(os.path.join(version_dir, "variables", "variables.index"))
    loaded = tf.saved_model.load(version_dir)
    assert {"serving_default", "serving_flip"} <= set(loaded.signatures)
    for name in ("serving_default", "serving_flip"):
        signature = loaded.signatures[name]
        spec = signature.structured_input_signature[1]
        assert list(spec) == ["images"]
        assert spec["images"].dtype == tf.uint8
        assert spec["images"].shape.as_list() == [None, 112, 96, 3]
        output = signature.structured_outputs
        assert list(output) == ["embeddings"]
        assert output["embeddings"].dtype == tf.float32
        assert output["embeddings"].shape.as_list() == [None, EMBEDDING_DIM]


def test_parity_with_keras_on_real_lfw_faces(exported, parity_faces, keras_reference):
    loaded = tf.saved_model.load(exported[1])
    out = loaded.signatures["serving_default"](images=tf.constant(parity_faces))["embeddings"]
    out = out.numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(out - keras_reference(parity_faces))) <= 1e-5


def test_flip_signature_fuses_image_and_mirror(exported, parity_faces, keras_reference):
    loaded = tf.saved_model.load(exported[1])
    out = loaded.signatures["serving_flip"](images=tf.constant(parity_faces))["embeddings"]
    mirrored = parity_faces[:, :, ::-1]
    expected = unit_rows(keras_reference(parity_faces) + keras_reference(mirrored))
    assert np.max(np.abs(out.numpy() - expected)) <= 1e-5


def test_variables_stored_once(exported, backbone):
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in backbone.weights)
    variables_dir = os.path.join(exported[1], "variables")
    stored = sum(
        os.path.getsize(os.path.join(variables_dir, f))
        for f in os.listdir(variables_dir)
        if f.startswith("variables.data")
    )
    assert weight_bytes <= stored < 1.1 * weight_bytes


def test_embedder_interface(exported, parity_faces, keras_reference):
    embedder = load_saved_model_embedder(exported[0])  # the versioned parent directory
    assert embedder.input_size == (112, 96)
    out = embedder(parity_faces)
    assert out.dtype == np.float32 and out.shape == (len(parity_faces), EMBEDDING_DIM)
    assert np.max(np.abs(out - keras_reference(parity_faces))) <= 1e-5
    with pytest.raises(UserInputError, match=r"\[N, 112, 96, 3\].*\[2, 112, 112, 3\]"):
        embedder(np.zeros((2, 112, 112, 3), np.uint8))


def test_float32_input_signature(backbone, tmp_path, parity_faces, keras_reference):
    version_dir = export_saved_model(backbone, tmp_path / "float", input_dtype="float32")
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].dtype == tf.float32
    out = signature(images=tf.constant(parity_faces, tf.float32))["embeddings"].numpy()
    assert np.max(np.abs(out - keras_reference(parity_faces))) <= 1e-5


def test_versions_are_kept_and_never_overwritten_silently(backbone, tmp_path, parity_faces):
    other = build_tiny_backbone(seed=1)
    export_dir = tmp_path / "sphereface"
    export_saved_model(backbone, export_dir, version=1)
    before = load_saved_model_embedder(export_dir)(parity_faces)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(other, export_dir, version=1)
    np.testing.assert_array_equal(load_saved_model_embedder(export_dir)(parity_faces), before)

    export_saved_model(other, export_dir, version=2)
    expected_other = unit_rows(other.predict(parity_faces.astype(np.float32), verbose=0))
    latest = load_saved_model_embedder(export_dir)
    assert latest.path.endswith(os.sep + "2")
    assert np.max(np.abs(latest(parity_faces) - expected_other)) <= 1e-5
    np.testing.assert_array_equal(load_saved_model_embedder(export_dir / "1")(parity_faces), before)

    export_saved_model(other, export_dir, version=1, overwrite=True)
    replaced = load_saved_model_embedder(export_dir / "1")(parity_faces)
    assert np.max(np.abs(replaced - expected_other)) <= 1e-5
    assert sorted(os.listdir(export_dir)) == ["1", "2"]


def test_bad_arguments_are_user_errors(backbone, tmp_path):
    with pytest.raises(UserInputError, match="positive integer version"):
        export_saved_model(backbone, tmp_path / "x", version=0)
    with pytest.raises(UserInputError, match="input_dtype"):
        export_saved_model(backbone, tmp_path / "x", input_dtype="int32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="saved_model.pb"):
        load_saved_model_embedder(tmp_path / "empty")


@pytest.mark.slow
def test_saved_model_cli_lists_the_signature(exported):
    result = subprocess.run(
        ["saved_model_cli", "show", "--dir", exported[1], "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    default = text[text.index("signature_def['serving_default']") :]
    default = default[: default.index("Method name is")]
    assert "inputs['images'] tensor_info:" in default
    assert "dtype: DT_UINT8" in default and "shape: (-1, 112, 96, 3)" in default
    assert "outputs['embeddings'] tensor_info:" in default
    assert "dtype: DT_FLOAT" in default and f"shape: (-1, {EMBEDDING_DIM})" in default
    assert "signature_def['serving_flip']" in text


KILLED_EXPORT = """
import sys, time
sys.path[:0] = [{here!r}, {repo!r}]
from export_test_utils import build_tiny_backbone
from keras_sphereface.export import saved_model

write = saved_model.write_saved_model

def write_then_hang(model, path, **kwargs):
    write(model, path, **kwargs)
    print("WRITTEN", flush=True)  # the new files are complete, the rename has not happened
    time.sleep(600)

saved_model.write_saved_model = write_then_hang
saved_model.export_saved_model(
    build_tiny_backbone(seed=1), sys.argv[1], version=int(sys.argv[2]), overwrite=True
)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2], ids=["replacing_version_1", "new_version_2"])
def test_kill_during_export_keeps_previous_export(backbone, tmp_path, parity_faces, version):
    export_dir = tmp_path / "sphereface"
    export_saved_model(backbone, export_dir, version=1)
    before = load_saved_model_embedder(export_dir)(parity_faces)
    script = KILLED_EXPORT.format(here=HERE, repo=REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(export_dir), str(version)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "WRITTEN"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert [n for n in os.listdir(export_dir) if n.isdigit()] == ["1"]
    np.testing.assert_array_equal(load_saved_model_embedder(export_dir)(parity_faces), before)


def test_training_model_exports_its_backbone_only(backbone, tmp_path, parity_faces, keras_reference):
    from keras_sphereface.models import build_training_model

    num_classes = 2000  # a margin head of 32 x 2000 weights, big enough to notice if shipped
    training_model = build_training_model(backbone, num_classes=num_classes, mode="cosface")
    version_dir = export_saved_model(training_model, tmp_path / "from_training_model")
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["images"]  # no labels input
    out = signature(images=tf.constant(parity_faces))["embeddings"].numpy()
    assert np.max(np.abs(out - keras_reference(parity_faces))) <= 1e-5
    # the margin head's (feature_dim, num_classes) kernel is not shipped
    head_bytes = EMBEDDING_DIM * num_classes * 4
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in backbone.weights)
    variables_dir = os.path.join(version_dir, "variables")
    stored = sum(
        os.path.getsize(os.path.join(variables_dir, f))
        for f in os.listdir(variables_dir)
        if f.startswith("variables.data")
    )
    assert weight_bytes <= stored < weight_bytes + head_bytes / 2


def test_batch_norm_backbone_serves_its_moving_statistics(tmp_path, parity_faces):
    model = build_tiny_backbone(seed=3, batch_norm=True)
    version_dir = export_saved_model(model, tmp_path / "batch_norm")
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    out = signature(images=tf.constant(parity_faces))["embeddings"].numpy()
    faces = parity_faces.astype(np.float32)
    inference = unit_rows(model(faces, training=False))
    assert np.max(np.abs(out - inference)) <= 1e-5
    assert np.max(np.abs(unit_rows(model(faces, training=True)) - inference)) > 1e-2
