"""Smoke test of `python cli/main.py demo`: every artefact is written and the exported
SavedModel reproduces the saved Keras model's embeddings."""

import json

import numpy as np
import pytest
from click.testing import CliRunner


def _main():
    from cli.main import main

    return main


@pytest.mark.slow
def test_demo_writes_every_artefact_and_the_saved_model_reloads(tmp_path):
    import keras

    from keras_sphereface.digits import load_digits_rgb
    from keras_sphereface.export import load_saved_model_embedder
    from keras_sphereface.models import load_embedding_model

    output = tmp_path / "demo"
    result = CliRunner().invoke(_main(), ["demo", "--output", str(output), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "unseen 7-9" in result.output and str(output) in result.output

    results = json.loads((output / "demo_results.json").read_text())
    assert [row["mode"] for row in results["models"]] == [
        "softmax", "sphereface", "cosface", "arcface"
    ]
    for row in results["models"]:
        for split in ("seen", "unseen"):
            assert 0.0 <= row[split]["accuracy_mean"] <= 1.0
            assert len(row[split]["fold_accuracies"]) == 10
        assert (output / row["model_file"]).is_file()
    assert (output / "features.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| softmax |" in (output / "report.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over

    # the SavedModel embeds like the exported model's saved .keras backbone
    exported = next(row for row in results["models"] if row["name"] == results["exported"])
    backbone = load_embedding_model(output / exported["model_file"])
    images = load_digits_rgb()[0][:16]
    expected = keras.ops.convert_to_numpy(backbone(images.astype("float32")))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    embedder = load_saved_model_embedder(output / "saved_model")
    assert embedder.input_size == (8, 8)
    np.testing.assert_allclose(embedder(images), expected, atol=1e-5)


def test_demo_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(_main(), ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "demo_results.json" in result.output and str(tmp_path) in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"
