"""`cli/main.py export`: prints the signature and parity; bad input is a message, exit code 2."""

import os
import re

import cv2
import pytest
from click.testing import CliRunner

from cli.main import main


@pytest.fixture(scope="module")
def model_file(backbone, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "backbone.keras"
    backbone.save(path)
    return str(path)


@pytest.fixture(scope="module")
def representative_dir(calibration_faces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("aligned")
    for index, face in enumerate(calibration_faces):
        cv2.imwrite(str(folder / f"face_{index:02d}.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    return str(folder)


def parity_figures(output, signature):
    match = re.search(rf"{signature}: max abs diff (\S+), min cosine (\S+)", output)
    assert match, output
    return float(match.group(1)), float(match.group(2))


def run(args, lfw_dir):
    return CliRunner().invoke(main, ["export", *args, "--lfw-dir", str(lfw_dir)])


def test_saved_model_signature_and_parity(model_file, tmp_path, lfw_dir):
    args = ["--model", model_file, "--output", str(tmp_path / "sm"), "--version", "2"]
    result = run(args, lfw_dir)
    assert result.exit_code == 0, result.output
    assert os.path.isfile(tmp_path / "sm" / "2" / "saved_model.pb")
    assert "signature_def['serving_default']" in result.output
    assert "inputs['images'] tensor_info:" in result.output
    assert "outputs['embeddings'] tensor_info:" in result.output
    assert "on 16 LFW faces" in result.output
    for signature in ("serving_default", "serving_flip"):
        max_abs_diff, min_cosine = parity_figures(result.output, signature)
        assert max_abs_diff <= 1e-5 and min_cosine >= 0.99999

    again = run(args, lfw_dir)
    assert again.exit_code == 2
    assert "Error:" in again.output and "overwrite" in again.output
    assert "Traceback" not in again.output


def test_tflite_int8_with_representative_faces(model_file, representative_dir, tmp_path, lfw_dir):
    args = ["--model", model_file, "--format", "tflite", "--quantize", "int8",
            "--representative", representative_dir, "--output", str(tmp_path)]
    result = run(args, lfw_dir)
    assert result.exit_code == 0, result.output
    assert os.path.isfile(tmp_path / "model_int8.tflite")
    assert "inputs['images']" in result.output and "outputs['embeddings']" in result.output
    assert parity_figures(result.output, "serving_default")[1] >= 0.99


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "saved_model", "--quantize", "int8"], "--quantize none"),
        (["--format", "tflite", "--quantize", "int8"], "--representative"),
    ],
)
def test_bad_options_are_user_errors(model_file, tmp_path, lfw_dir, args, message):
    result = run(["--model", model_file, "--output", str(tmp_path), *args], lfw_dir)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_run_directory_exports_the_backbone(backbone, tmp_path, lfw_dir):
    from keras_sphereface.models import build_training_model

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    build_training_model(backbone, num_classes=10, mode="arcface").save(run_dir / "checkpoint.keras")
    args = ["--model", str(run_dir), "--format", "tflite", "--output", str(tmp_path / "m.tflite")]
    result = run(args, lfw_dir)
    assert result.exit_code == 0, result.output
    assert "inputs['images']" in result.output and "labels" not in result.output
    assert parity_figures(result.output, "serving_default")[1] >= 0.99999
