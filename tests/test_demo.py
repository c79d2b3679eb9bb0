"""The digits setting (open-set split, LFW-style pairs) and a smoke test of
`python cli/main.py demo`: every artefact is written and the exported SavedModel reproduces
the saved Keras model's embeddings."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from keras_sphereface.digits import open_set_split, sample_pairs
from keras_sphereface.errors import UserInputError


def test_open_set_split_and_pairs():
    labels = np.repeat(np.arange(5), 20)
    split = open_set_split(labels, train_classes=[0, 1, 2], test_fraction=0.25, seed=3)
    assert set(labels[split["train"]]) == {0, 1, 2}
    assert set(labels[split["unseen"]]) == {3, 4}
    assert len(split["train"]) == 45 and len(split["seen_test"]) == 15
    everything = np.concatenate([split["train"], split["seen_test"], split["unseen"]])
    assert sorted(everything.tolist()) == list(range(100))

    subset = labels[split["unseen"]]
    first, second, is_same, folds = sample_pairs(subset, pairs_per_fold=5, num_folds=4, seed=0)
    assert len(first) == 40 and np.bincount(folds).tolist() == [10] * 4
    np.testing.assert_array_equal(subset[first] == subset[second], is_same)
    assert is_same.sum() == 20 and np.all(first != second)
    assert len({(min(a, b), max(a, b)) for a, b in zip(first, second)}) == 40
    with pytest.raises(UserInputError, match="at least 2 training classes"):
        open_set_split(labels, train_classes=[7, 8])


@pytest.mark.slow
@pytest.mark.multi_backend
def test_digits_training_and_verification_run_on_any_backend():
    from keras_sphereface.digits import load_digits_rgb, train_digits_model, verify_digits
    from keras_sphereface.models import embedding_model

    images, labels = load_digits_rgb()
    assert images.shape == (1797, 8, 8, 3) and images.dtype == np.uint8 and images.max() == 255
    split = open_set_split(labels, range(7))
    model = train_digits_model(
        images[split["train"]], labels[split["train"]], 7, mode="arcface", margin=0.3,
        scale=8.0, epochs=1, width=8,
    )
    report, features = verify_digits(
        embedding_model(model), images[split["unseen"]], labels[split["unseen"]]
    )
    assert features.shape == (len(split["unseen"]), 2) and np.all(np.isfinite(features))
    assert len(report["fold_accuracies"]) == 10 and 0.0 <= report["accuracy_mean"] <= 1.0
    assert 0.0 <= report["alignment"] <= 4.0 and -4.0 <= report["uniformity"] <= 0.0


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
