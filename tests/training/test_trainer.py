"""Training runs end to end on a synthetic identity folder: run directory, logs (λ, lr),
exact resume after Ctrl-C, NaN stop keeping the last good checkpoint, bad input."""

import csv
import json
import os

import cv2
import keras
import numpy as np
import pytest

from keras_sphereface.errors import UserInputError
from keras_sphereface.models import load_embedding_model
from keras_sphereface.training import resume, train

TINY = dict(backbone="sphere4", width_multiplier=0.125, embedding_dim=8, batch_size=4, seed=3)
IDENTITIES, IMAGES_EACH = 3, 4  # 12 images: 3 steps of 4 per epoch


def write_identity_folder(root, identities=IDENTITIES, images_each=IMAGES_EACH, size=(112, 96)):
    rng = np.random.default_rng(0)
    for identity in range(identities):
        folder = root / f"person_{identity}"
        folder.mkdir(parents=True)
        face = rng.integers(0, 256, (*size, 3))
        for i in range(images_each):
            noisy = np.clip(face + rng.normal(0, 25, face.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{i}.jpg"), noisy)
    return root


@pytest.fixture(scope="module")
def identity_folder(tmp_path_factory):
    return write_identity_folder(tmp_path_factory.mktemp("faces"))


@pytest.fixture(scope="module")
def straight_run(identity_folder, tmp_path_factory):
    """Two epochs without interruption (the reference for the resume test)."""
    output = tmp_path_factory.mktemp("runs") / "straight"
    result = train(identity_folder, output, epochs=2, verbose=0, **TINY)
    return output, result


def checkpoint_weights(run_dir):
    model = keras.saving.load_model(os.path.join(run_dir, "checkpoint.keras"))
    return model, [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.multi_backend
def test_run_directory_layout(straight_run, identity_folder):
    output, result = straight_run
    assert result.stopped is None and result.epochs_done == 2
    assert sorted(os.listdir(output)) == [
        "checkpoint.keras", "config.json", "label_map.json", "log.csv", "tensorboard",
    ]  # fmt: skip
    config = json.load(open(output / "config.json"))
    assert config["backbone"] == "sphere4" and config["epochs"] == 2
    assert config["steps_per_epoch"] == IDENTITIES * IMAGES_EACH // TINY["batch_size"]
    label_map = json.load(open(output / "label_map.json"))
    assert label_map["class_names"] == [f"person_{i}" for i in range(IDENTITIES)]
    assert any(name.startswith("events.") for _, _, files in os.walk(output / "tensorboard") for name in files)


@pytest.mark.multi_backend
def test_log_has_loss_accuracy_lr_and_lambda(straight_run):
    output, _ = straight_run
    rows = list(csv.DictReader(open(output / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    steps, total = 3, 6
    for row in rows:
        assert np.isfinite(float(row["loss"])) and 0 <= float(row["accuracy"]) <= 1
        iteration = (int(row["epoch"]) + 1) * steps  # read after the epoch's last step
        # A-Softmax λ annealing, Caffe defaults: max(5, 1000 / (1 + 0.12 · it))
        assert float(row["lambda"]) == pytest.approx(max(5.0, 1000.0 / (1 + 0.12 * iteration)), rel=1e-5)
        # default base rate: the paper's 0.1 at batch 256 scaled linearly to batch 4;
        # paper schedule scaled to 6 steps: base for steps < round(6·16/28) = 3, then base/10,
        # base/100 from round(6·24/28) = 5
        base = 0.1 * TINY["batch_size"] / 256
        expected_lr = base if iteration < 3 else base / 10 if iteration < 5 else base / 100
        assert float(row["learning_rate"]) == pytest.approx(expected_lr, rel=1e-5)


def test_normalized_feature_modes_warm_up_by_default(identity_folder, tmp_path):
    from keras_sphereface.training.trainer import default_warmup_epochs

    modes = ("softmax", "lsoftmax", "sphereface", "cosface", "arcface")
    assert [default_warmup_epochs(mode) for mode in modes] == [0, 0, 0, 2, 2]
    assert default_warmup_epochs("sphereface", scale=30.0) == 2  # a scale normalizes x too
    output = tmp_path / "cosface"
    train(identity_folder, output, epochs=2, mode="cosface", verbose=0, **TINY)
    assert json.load(open(output / "config.json"))["warmup_epochs"] == 2
    base, warmup_steps = 0.1 * TINY["batch_size"] / 256, 2 * 3
    # read after each epoch's last step: iteration 3 (steps at 3 and 5 of 6), then 6
    logged = [float(r["learning_rate"]) for r in csv.DictReader(open(output / "log.csv"))]
    assert logged == pytest.approx([base / 10 * 4 / warmup_steps, base / 100], rel=1e-5)
    reloaded = keras.saving.load_model(output / "checkpoint.keras")  # the schedule deserializes
    assert float(reloaded.optimizer.learning_rate) == pytest.approx(base / 100, rel=1e-5)


class InterruptAt(keras.callbacks.Callback):
    """Raise KeyboardInterrupt (Ctrl-C) in the middle of `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupt_then_resume_equals_straight_run(straight_run, identity_folder, tmp_path):
    output = tmp_path / "interrupted"
    stopped = train(identity_folder, output, epochs=2, verbose=0, callbacks=[InterruptAt(1)], **TINY)
    assert stopped.stopped == "interrupted" and stopped.epochs_done == 1
    model, _ = checkpoint_weights(output)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3  # epoch 1 only

    resumed = resume(output, verbose=0)
    assert resumed.stopped is None and resumed.epochs_done == 2
    straight_model, straight = checkpoint_weights(straight_run[0])
    resumed_model, weights = checkpoint_weights(output)
    assert [w.path for w in resumed_model.weights] == [w.path for w in straight_model.weights]
    for a, b in zip(weights, straight):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(resumed_model.optimizer.variables, straight_model.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6)
    assert resumed_model.get_layer("margin_softmax").current_lambda() == pytest.approx(
        max(5.0, 1000.0 / (1 + 0.12 * 6)), rel=1e-5
    )
    # the log holds each epoch once: the interrupted epoch was never written
    assert [int(r["epoch"]) for r in csv.DictReader(open(output / "log.csv"))] == [0, 1]
    # nothing to do once done
    assert resume(output, verbose=0).epochs_done == 2


def test_jitter_is_recorded_reaches_the_data_and_resumes_exactly(straight_run, identity_folder, tmp_path):
    straight = train(identity_folder, tmp_path / "straight", epochs=2, verbose=0, jitter=0.1, **TINY)
    assert straight.epochs_done == 2
    assert json.load(open(tmp_path / "straight" / "config.json"))["jitter"] == 0.1
    _, jittered = checkpoint_weights(tmp_path / "straight")
    _, flips_only = checkpoint_weights(straight_run[0])  # same seed, no jitter
    assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(jittered, flips_only))

    output = tmp_path / "interrupted"
    train(identity_folder, output, epochs=2, verbose=0, jitter=0.1, callbacks=[InterruptAt(1)], **TINY)
    assert resume(output, verbose=0).epochs_done == 2  # epoch 1's jitter again, not a new draw
    _, resumed = checkpoint_weights(output)
    for a, b in zip(resumed, jittered):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_run_written_before_jitter_resumes_without_it(straight_run, tmp_path):
    from keras_sphereface.training.trainer import read_config

    config = json.load(open(straight_run[0] / "config.json"))
    del config["jitter"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_config(tmp_path)["jitter"] == 0.0


class PoisonAt(keras.callbacks.Callback):
    """Make the model's weights NaN after the first batch of `epoch` (a diverged step)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 0:
            kernel = self.model.get_layer("margin_softmax").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


@pytest.mark.slow
def test_nan_stops_and_keeps_the_last_good_checkpoint(identity_folder, tmp_path):
    output = tmp_path / "nan"
    result = train(identity_folder, output, epochs=3, verbose=0, callbacks=[PoisonAt(1)], **TINY)
    assert result.stopped == "nan" and result.epochs_done == 1
    model, weights = checkpoint_weights(output)
    assert all(np.isfinite(w).all() for w in weights)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3


def test_embedding_model_from_run_dir(straight_run):
    output, _ = straight_run
    embedder = load_embedding_model(output)
    assert embedder.name == "sphere4"
    features = embedder(np.zeros((2, 112, 96, 3), "uint8"))
    assert tuple(features.shape) == (2, 8)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: root, "no such images"),
        (lambda root: write_identity_folder(root / "one", identities=1), "at least 2 identities"),
    ],
)
def test_bad_data_folder(tmp_path, make, message):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserInputError, match=message):
        train(make(tmp_path / "data"), tmp_path / "run", epochs=1, verbose=0, **TINY)
    assert not (tmp_path / "run").exists()


def test_refuses_a_used_output_and_a_non_run_resume(identity_folder, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("x")
    with pytest.raises(UserInputError, match="--resume"):
        train(identity_folder, tmp_path / "used", verbose=0, **TINY)
    with pytest.raises(UserInputError, match="config.json"):
        resume(tmp_path / "used", verbose=0)


def test_batch_larger_than_the_data(identity_folder, tmp_path):
    with pytest.raises(UserInputError, match="batch_size"):
        train(identity_folder, tmp_path / "run", verbose=0, **{**TINY, "batch_size": 64})


@pytest.mark.parametrize(
    "option, message",
    [({"backbone": "sphere21"}, "sphere20"), ({"mode": "nope"}, "nope"),
     ({"jitter": 0.7}, r"0 <= jitter < 0.5. Received: jitter=0.7")],
)
def test_bad_model_options_fail_before_reading_the_data(tmp_path, option, message):
    with pytest.raises(UserInputError, match=message):
        train(tmp_path / "not_read", tmp_path / "run", verbose=0, **{**TINY, **option})


@pytest.mark.slow
@pytest.mark.multi_backend
def test_without_tensorflow_trains_the_same_weights_from_face_dataset(
    straight_run, identity_folder, tmp_path, monkeypatch
):
    """The JAX GPU machine has no TensorFlow: training then reads with FaceDataset (OpenCV),
    which must give the very batches of tf.data, hence the same weights after 2 epochs, on
    every backend. (Through Keras' own worker queue, JAX was served batches left over from
    fit's peek and from the previous epoch: 3e-4 apart after 2 epochs; see pydataset.py.)"""
    from keras_sphereface.training import trainer

    monkeypatch.setattr(trainer, "_tensorflow_available", lambda: False)
    output = tmp_path / "without_tf"
    result = train(identity_folder, output, epochs=2, verbose=0, **TINY)
    assert result.stopped is None and result.epochs_done == 2
    assert "tensorboard" not in os.listdir(output)
    reference, _ = straight_run
    _, expected = checkpoint_weights(reference)
    _, got = checkpoint_weights(output)
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.multi_backend
def test_without_tensorflow_interrupt_then_resume_equals_straight_run(
    straight_run, identity_folder, tmp_path, monkeypatch
):
    """A resumed FaceDataset pass starts at the epoch after the checkpoint's."""
    from keras_sphereface.training import trainer

    monkeypatch.setattr(trainer, "_tensorflow_available", lambda: False)
    output = tmp_path / "interrupted"
    stopped = train(identity_folder, output, epochs=2, verbose=0, callbacks=[InterruptAt(1)], **TINY)
    assert stopped.stopped == "interrupted" and stopped.epochs_done == 1
    assert resume(output, verbose=0).epochs_done == 2
    _, straight = checkpoint_weights(straight_run[0])  # tf.data where TensorFlow is installed
    _, weights = checkpoint_weights(output)
    for a, b in zip(weights, straight):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("asked, expected", [(None, "reparametrized"), ("projected", "projected")])
def test_training_head_is_the_layers_default_unless_told_otherwise(asked, expected):
    """The projected head at the initializer's norm ρ takes steps of lr/ρ² on the centres and,
    unlike W/‖W‖ (whose norms grow with each step), never slows down: CosFace at 5,314 LFW
    identities (ρ = 0.22) did not learn under SGD. So `train` keeps the layer's default."""
    from keras_sphereface.backbones import get_backbone
    from keras_sphereface.training.trainer import compiled_training_model

    net = get_backbone("sphere4", input_shape=(112, 96, 3), embedding_dim=8, width_multiplier=0.125)
    model = compiled_training_model(net, 5, 10, mode="cosface", weight_normalization=asked)
    assert model.get_layer("margin_softmax").weight_normalization == expected
