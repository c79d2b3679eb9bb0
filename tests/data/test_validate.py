"""Unreadable files are reported by name and count before training, or skipped explicitly."""

import logging

import cv2
import numpy as np
import pytest

from keras_sphereface.data import scan_identity_folder, validate_images
from keras_sphereface.errors import UserInputError

BAD = {
    "Bob/empty.jpg": "is empty",
    "Bob/text.jpg": "is not a JPEG or PNG",
    "Carol/truncated.jpg": "cannot be decoded",
    "Carol/corrupt.jpg": "cannot be decoded",
    "Carol/truncated.png": "cannot be decoded",
}


@pytest.fixture
def tree_with_bad_files(crop_tree):
    root, images = crop_tree
    good_jpeg = cv2.imencode(".jpg", images["Alice/Alice_0000.png"])[1].tobytes()
    good_png = (root / "Alice/Alice_0001.png").read_bytes()
    (root / "Alice/Alice_good.jpg").write_bytes(good_jpeg)
    (root / "Bob/empty.jpg").write_bytes(b"")
    (root / "Bob/text.jpg").write_bytes(b"<html>404 Not Found</html>")
    (root / "Carol/truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    corrupt = bytearray(good_jpeg)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 4] = b"\xff\x47\xff\x47"  # a marker that does not exist, mid-scan
    (root / "Carol/corrupt.jpg").write_bytes(bytes(corrupt))
    (root / "Carol/truncated.png").write_bytes(good_png[: len(good_png) // 2])
    return root


def test_bad_files_are_named_with_their_count(tree_with_bad_files):
    index = scan_identity_folder(tree_with_bad_files)
    with pytest.raises(UserInputError) as error:
        validate_images(index, decoder="tensorflow")
    message = str(error.value)
    assert f"Received: {len(BAD)} bad of {len(index)} files" in message
    assert "--skip-bad" in message
    for relpath, reason in BAD.items():
        assert f"{relpath}: {reason}" in message
    assert "Alice_good.jpg" not in message


def test_skip_bad_lists_and_drops_each_file(tree_with_bad_files, caplog):
    index = scan_identity_folder(tree_with_bad_files)
    with caplog.at_level(logging.WARNING):
        kept, skipped = validate_images(index, skip_bad=True, decoder="tensorflow")
    assert sorted(p for p, _ in skipped) == sorted(BAD)
    assert len(kept) == len(index) - len(BAD) and not set(kept.paths) & set(BAD)
    assert kept.class_names == index.class_names
    assert kept.labels.tolist() == [index.labels[index.paths.index(p)] for p in kept.paths]
    for relpath in BAD:
        assert f"Skipping {relpath}" in caplog.text


def test_opencv_decoder_reports_unreadable_files(tree_with_bad_files):
    index = scan_identity_folder(tree_with_bad_files)
    _, skipped = validate_images(index, skip_bad=True, decoder="opencv")
    # OpenCV, like the PyDataset loader that uses it, tolerates some JPEG damage.
    assert {"Bob/empty.jpg", "Bob/text.jpg", "Carol/truncated.png"} <= {p for p, _ in skipped}
    assert not {p for p, _ in skipped} - set(BAD)


@pytest.mark.parametrize("decoder", ["tensorflow", "opencv"])
def test_wrong_crop_size_is_reported(crop_tree, decoder):
    root, images = crop_tree
    cv2.imwrite(str(root / "Bob/big.png"), np.zeros((250, 250, 3), np.uint8))
    index = scan_identity_folder(root)
    validate_images(index.select(np.array([p != "Bob/big.png" for p in index.paths])), image_size=(112, 96), decoder=decoder)
    with pytest.raises(UserInputError, match=r"Bob/big.png: is 250x250, not an aligned 112x96 crop"):
        validate_images(index, image_size=(112, 96), decoder=decoder)
