"""Pair-list parsing and validation: errors name the file and the line."""

import numpy as np
import pytest

from keras_sphereface.errors import UserInputError
from keras_sphereface.evaluation.pairs import read_pairs

GOOD = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tBob\t2
Cid\t1\tAnn\t2
Dan\t1\t2
Dan\t2\t3
Eve\t1\tDan\t3
Eve\t2\tBob\t1
"""


def _write(tmp_path, text, name="pairs.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _make_images(root, relpaths):
    for relpath in relpaths:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(b"x")


def test_parses_folds_labels_and_paths(tmp_path):
    pairs = read_pairs(_write(tmp_path, GOOD))
    assert len(pairs) == 8 and pairs.num_folds == 2 and pairs.pairs_per_fold == 2
    np.testing.assert_array_equal(pairs.is_same, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pairs.folds, [0, 0, 0, 0, 1, 1, 1, 1])
    assert pairs.left[0] == "Ann/Ann_0001.jpg" and pairs.right[0] == "Ann/Ann_0002.jpg"
    assert pairs.left[3] == "Cid/Cid_0001.jpg" and pairs.right[3] == "Ann/Ann_0002.jpg"
    assert pairs.line_numbers == tuple(range(2, 10))
    assert "Eve/Eve_0002.jpg" in pairs.image_paths


def test_lfw_pairs_file(lfw_dir):
    pairs = read_pairs(lfw_dir / "pairs.txt", lfw_dir / "lfw-deepfunneled")
    assert len(pairs) == 6000 and pairs.is_same.sum() == 3000
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    assert len(pairs.image_paths) == 7701


@pytest.mark.parametrize(
    "line_number, replacement, fragment",
    [
        (1, "10 three", "header"),
        (3, "Bob\t1", "matched pair"),  # too few fields
        (4, "Ann\t1\t2", "mismatched pair"),  # a matched line where a mismatched one belongs
        (6, "Dan\tone\t2", "positive integer"),
        (8, "Eve\t0\tDan\t3", "positive integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line_number, replacement, fragment):
    lines = GOOD.splitlines()
    lines[line_number - 1] = replacement
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=fragment) as error:
        read_pairs(path)
    assert f"line {line_number}" in str(error.value) and str(path) in str(error.value)
    assert repr(replacement) in str(error.value)


def test_wrong_fold_count_is_an_error(tmp_path):
    path = _write(tmp_path, GOOD.replace("2\t2", "3\t2", 1))
    with pytest.raises(UserInputError, match="expected 12 pair lines. Received: 8") as error:
        read_pairs(path)
    assert str(path) in str(error.value)
    path = _write(tmp_path, "".join(GOOD.splitlines(keepends=True)[:-1]), "short.txt")
    with pytest.raises(UserInputError, match="Received: 7 pair lines"):
        read_pairs(path)


def test_missing_image_names_the_line(tmp_path):
    pairs_path = _write(tmp_path, GOOD)
    images = tmp_path / "images"
    everything = read_pairs(pairs_path).image_paths
    _make_images(images, [p for p in everything if p != "Dan/Dan_0003.jpg"])
    with pytest.raises(UserInputError, match="line 7") as error:  # "Dan 2 3" is line 7
        read_pairs(pairs_path, images)
    assert "Dan_0003.jpg" in str(error.value) and str(pairs_path) in str(error.value)
    _make_images(images, ["Dan/Dan_0003.jpg"])
    assert len(read_pairs(pairs_path, images)) == 8


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(UserInputError, match="existing pair list"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(UserInputError, match="empty file"):
        read_pairs(_write(tmp_path, "\n"))
