"""TF Serving compatibility without a model server: the requests of examples/serving_client.py
are decoded the way the server decodes them and fed to the exported signature by name."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
from export_test_utils import unit_rows
from tensorflow_serving.apis import predict_pb2

from keras_sphereface.export import export_saved_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT_PATH = os.path.join(REPO_ROOT, "examples", "serving_client.py")


@pytest.fixture(scope="module")
def client(load_example):
    return load_example("serving_client")


@pytest.fixture(scope="module")
def served(backbone, tmp_path_factory):
    """What TF Serving does with MODEL_NAME=sphereface: load the highest version."""
    export_dir = tmp_path_factory.mktemp("models") / "sphereface"
    export_saved_model(backbone, export_dir, version=3)
    versions = [int(name) for name in os.listdir(export_dir) if name.isdigit()]
    return tf.saved_model.load(str(export_dir / str(max(versions))))


def serve_predict(served, wire_bytes):
    """Parse a serialized PredictRequest and run the signature it names on its inputs."""
    request = predict_pb2.PredictRequest.FromString(wire_bytes)
    signature = served.signatures[request.model_spec.signature_name]
    inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    return signature(**inputs)["embeddings"].numpy()


@pytest.mark.parametrize("signature_name", ["serving_default", "serving_flip"])
def test_grpc_predict_request_feeds_the_signature(
    client, served, parity_faces, keras_reference, signature_name
):
    request = client.build_predict_request(parity_faces, signature_name=signature_name)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.model_spec.name == "sphereface"
    tensor = request.inputs["images"]
    assert tensor.dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(tensor), parity_faces)

    embeddings = serve_predict(served, request.SerializeToString())
    expected = keras_reference(parity_faces)
    if signature_name == "serving_flip":
        expected = unit_rows(expected + keras_reference(parity_faces[:, :, ::-1]))
    assert np.max(np.abs(embeddings - expected)) <= 1e-5


def test_rest_body_feeds_the_signature(client, served, parity_faces, keras_reference):
    body = json.loads(client.build_rest_body(parity_faces[:2]))
    assert body["signature_name"] == "serving_default"
    signature = served.signatures[body["signature_name"]]
    dtype = signature.structured_input_signature[1]["images"].dtype
    # Row format: one instance per image; the server casts JSON numbers to the input dtype.
    images = tf.constant(np.array(body["instances"]), dtype=dtype)
    embeddings = signature(images=images)["embeddings"].numpy()
    assert np.max(np.abs(embeddings - keras_reference(parity_faces[:2]))) <= 1e-5


@pytest.mark.slow
def test_client_script_dry_run(parity_faces, tmp_path):
    for index, face in enumerate(parity_faces[:3]):
        cv2.imwrite(str(tmp_path / f"face_{index}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    result = subprocess.run(
        [sys.executable, CLIENT_PATH, "--images", str(tmp_path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "input 'images' [3, 112, 96, 3]" in result.stdout
    assert "REST body" in result.stdout
