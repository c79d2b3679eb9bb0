"""`train` with the bad inputs a user hits: each is one message naming the file / line /
value, exit code 2, no traceback, and nothing written to the run directory before the data
is known to be good. A divergence (NaN) stops with exit code 1 and a loadable checkpoint."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from fault_utils import (
    BROKEN_IMAGES,
    TINY_TRAIN,
    UNUSUAL_IMAGES,
    assert_user_error,
    run_cli,
    write_identity_folder,
)


def train(*args):
    return run_cli("train", *TINY_TRAIN, "--batch-size", 4, *args)


def _one_identity(root):
    return write_identity_folder(root / "one", identities=1)


def _empty_identity_folders(root):
    for name in ("a", "b"):
        (root / name).mkdir()
    return root


def _loose_images(root):
    write_identity_folder(root / "x")
    os.replace(root / "x" / "person_0", root / "loose")
    return root / "loose"


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda root: root / "missing", ["missing", "does not exist"]),
        (lambda root: root, ["no such images"]),
        (_empty_identity_folders, ["no such images"]),
        (_one_identity, ["at least 2 identities", "person_0"]),
        (_loose_images, ["single identity", "0.jpg"]),
    ],
    ids=["missing", "empty", "empty_identity_folders", "one_identity", "one_persons_folder"],
)
def test_bad_data_folder(tmp_path, make, fragments):
    data = tmp_path / "data"
    data.mkdir()
    result = train("--data", make(data), "--output", tmp_path / "run")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", sorted(BROKEN_IMAGES))
def test_broken_image_is_named_before_training(tmp_path, identity_folder, kind):
    bad = identity_folder / "person_1" / "bad.jpg"
    BROKEN_IMAGES[kind](bad)
    result = train("--data", identity_folder, "--output", tmp_path / "run")
    assert_user_error(result, "person_1/bad.jpg", "--skip-bad")
    assert not (tmp_path / "run").exists()


def test_skip_bad_lists_every_skipped_file_and_trains(tmp_path, identity_folder):
    for kind, write in BROKEN_IMAGES.items():
        write(identity_folder / "person_2" / f"{kind}.jpg")
    result = train("--data", identity_folder, "--output", tmp_path / "run", "--skip-bad")
    assert result.exit_code == 0, result.output
    for kind in BROKEN_IMAGES:
        assert f"person_2/{kind}.jpg" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert sorted(config["skipped_images"]) == sorted(f"person_2/{k}.jpg" for k in BROKEN_IMAGES)


def test_grayscale_rgba_and_16bit_images_are_read(tmp_path, identity_folder):
    """Valid but unusual files are converted to RGB uint8, not rejected."""
    for kind, write in UNUSUAL_IMAGES.items():
        write(identity_folder / "person_0" / f"{kind}.jpg")
    result = train("--data", identity_folder, "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["num_images"] == 12 + len(UNUSUAL_IMAGES) and not config["skipped_images"]


def test_crop_of_the_wrong_size(tmp_path, identity_folder):
    write_identity_folder(tmp_path / "big", identities=1, images_each=1, size=(250, 250))
    os.replace(tmp_path / "big" / "person_0" / "0.jpg", identity_folder / "person_0" / "big.jpg")
    result = train("--data", identity_folder, "--output", tmp_path / "run")
    assert_user_error(result, "person_0/big.jpg", "112x96")


# list files: (content, fragments of the message)
LIST_FILES = {
    "empty": ("", ["empty list file"]),
    "only_comments": ("# nothing here\n\n", ["empty list file"]),
    "no_label": ("person_0/0.jpg\n", ["line 1", "person_0/0.jpg"]),
    "text_label": ("person_0/0.jpg 0\nperson_0/1.jpg zero\n", ["line 2", "zero"]),
    "negative_label": ("person_0/0.jpg 0\nperson_1/0.jpg -1\n", ["line 2", "-1"]),
    "float_label": ("person_0/0.jpg 0\nperson_1/0.jpg 1.5\n", ["line 2", "1.5"]),
    "label_out_of_range": (
        "person_0/0.jpg 0\nperson_1/0.jpg 1\nperson_2/0.jpg 99999\n",
        ["line 3", "99999"],
    ),
    "missing_image": ("person_0/0.jpg 0\nperson_1/nope.jpg 1\n", ["person_1/nope.jpg"]),
    "one_label": ("person_0/0.jpg 0\nperson_0/1.jpg 0\n", ["at least 2 identities"]),
}


@pytest.mark.parametrize("name", sorted(LIST_FILES))
def test_bad_list_file(tmp_path, identity_folder, name):
    content, fragments = LIST_FILES[name]
    list_file = identity_folder / "train.txt"
    list_file.write_text(content)
    result = train("--data", list_file, "--output", tmp_path / "run", "--batch-size", 2)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("", ["none for 12 of 12 images"]),
        ("person_0/0.jpg 1 2 3\n", ["line 1", "10 finite numbers"]),
        ("person_0/0.jpg 1 2 3 4 5 6 7 8 9 nan\n", ["line 1", "nan"]),
        ("".join(f"person_{i}/{j}.jpg" + " 10" * 10 + "\n" for i in range(3) for j in range(4)),
         ["person_0/0.jpg", "distinct"]),
    ],
    ids=["no_entries", "short_line", "nan_point", "degenerate_points"],
)
def test_bad_landmarks_file(tmp_path, identity_folder, content, fragments):
    landmarks = tmp_path / "landmarks.txt"
    landmarks.write_text(content)
    result = train("--data", identity_folder, "--output", tmp_path / "run",
                   "--landmarks", landmarks)  # fmt: skip
    assert_user_error(result, *fragments)


def test_missing_landmarks_file(tmp_path, identity_folder):
    result = train("--data", identity_folder, "--output", tmp_path / "run",
                   "--landmarks", tmp_path / "nope.txt")  # fmt: skip
    assert_user_error(result, "nope.txt")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--image-size", "100x100"], ["(100, 100)"]),
        (["--image-size", "big"], ["big"]),
        (["--backbone", "sphere21"], ["sphere21"]),
        (["--mode", "nope"], ["nope"]),
        (["--batch-size", "64"], ["batch_size", "64"]),
    ],
    ids=["unsupported_size", "unparsable_size", "backbone", "mode", "batch_too_big"],
)
def test_bad_options(tmp_path, identity_folder, args, fragments):
    result = train("--data", identity_folder, "--output", tmp_path / "run", *args)
    assert_user_error(result, *fragments)


def test_output_is_a_file(tmp_path, identity_folder):
    (tmp_path / "run").write_text("x")
    result = train("--data", identity_folder, "--output", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (tmp_path / "run").read_text() == "x"


def test_unwritable_output_under_a_file(tmp_path, identity_folder):
    """Tests run as root, where chmod does not block writes: a path below a regular file
    can never be created."""
    (tmp_path / "file").write_text("x")
    result = train("--data", identity_folder, "--output", tmp_path / "file" / "run")
    assert_user_error(result, "file")
    assert (tmp_path / "file").read_text() == "x"


def test_used_output_is_not_overwritten(tmp_path, identity_folder):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    result = train("--data", identity_folder, "--output", tmp_path / "run")
    assert_user_error(result, "--resume")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = write_identity_folder(root / "faces")
    result = train("--data", data, "--output", root / "run")
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def finished_run(trained_once, tmp_path):
    """A copy of one finished 1-epoch run and its data (each test damages its own copy)."""
    shutil.copytree(trained_once, tmp_path / "copy", symlinks=True)
    config_path = tmp_path / "copy" / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["data"] = str(tmp_path / "copy" / "faces")
    config_path.write_text(json.dumps(config))
    return tmp_path / "copy" / "run"


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (lambda run: (run / "config.json").write_text('{"data": '), ["config.json"]),
        (lambda run: (run / "config.json").write_text("[1, 2]"), ["config.json"]),
        (lambda run: (run / "checkpoint.keras").write_text("not a zip"), ["checkpoint.keras"]),
        (lambda run: (run / "checkpoint.keras").unlink(), ["checkpoint.keras"]),
        (lambda run: (run / "label_map.json").write_text("{"), ["label_map.json"]),
        (lambda run: (run / "config.json").unlink(), ["config.json"]),
    ],
    ids=["truncated_config", "config_not_a_dict", "text_checkpoint", "no_checkpoint",
         "truncated_label_map", "no_config"],
)  # fmt: skip
def test_resume_of_a_damaged_run(finished_run, damage, fragments):
    damage(finished_run)
    result = train("--resume", "--output", finished_run, "--epochs", 2)
    assert_user_error(result, *fragments)


def test_resume_after_the_data_changed(finished_run):
    (finished_run.parent / "faces" / "person_0" / "0.jpg").unlink()
    result = train("--resume", "--output", finished_run, "--epochs", 2)
    assert_user_error(result, "same data")


def test_nan_stops_with_exit_1_and_keeps_a_loadable_checkpoint(tmp_path, identity_folder):
    """A learning rate of 1e30 blows the weights up in the first steps: TerminateOnNaN stops
    the run, the message says so, and checkpoint.keras is the last finite one."""
    result = train("--data", identity_folder, "--output", tmp_path / "run", "--epochs", 3,
                   "--lr", "1e30")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "NaN" in result.output and "Traceback" not in result.output
    model = keras.saving.load_model(tmp_path / "run" / "checkpoint.keras")
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)
