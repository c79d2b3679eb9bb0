import json

import numpy as np
import pytest

from keras_sphereface.data import (
    ImageIndex,
    check_labels,
    check_min_identities,
    epoch_order,
    jitter_matrices,
    load_label_map,
    read_list_file,
    save_label_map,
    scan_identity_folder,
    steps_per_epoch,
)
from keras_sphereface.errors import UserInputError


def test_scan_identity_folder_sorted_classes_and_files(tmp_path):
    for relpath in ["b/2.jpg", "b/1.PNG", "a/x.jpeg", "a/notes.txt", "a/.hidden.jpg", "c/readme.md"]:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_bytes(b"x")
    index = scan_identity_folder(tmp_path)
    assert index.paths == ("a/x.jpeg", "b/1.PNG", "b/2.jpg")
    assert index.labels.tolist() == [0, 1, 1] and index.labels.dtype == np.int32
    assert index.class_names == ("a", "b")  # "c" holds no image: no class
    assert index.absolute_paths()[0] == str(tmp_path / "a" / "x.jpeg")


def test_scan_identity_folder_errors(tmp_path):
    with pytest.raises(UserInputError, match="not a folder"):
        scan_identity_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no such images"):
        scan_identity_folder(tmp_path / "empty")
    (tmp_path / "one_person").mkdir()
    (tmp_path / "one_person" / "face_0001.jpg").write_bytes(b"x")
    with pytest.raises(UserInputError, match="single identity's folder"):
        scan_identity_folder(tmp_path / "one_person")


def test_read_list_file(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("# comment\nid0/a b.jpg 0\n\nid1/c.jpg 2\n")
    index = read_list_file(listing)
    assert index.paths == ("id0/a b.jpg", "id1/c.jpg")
    assert index.labels.tolist() == [0, 2]
    assert index.num_classes == 3 and index.root == str(tmp_path)
    named = read_list_file(listing, root=tmp_path / "images", class_names=["p", "q", "r"])
    assert named.class_names == ("p", "q", "r") and named.root == str(tmp_path / "images")
    with pytest.raises(UserInputError, match=r"labels in \[0, 2\)"):
        read_list_file(listing, class_names=["p", "q"])


@pytest.mark.parametrize("line", ["id0/a.jpg", "id0/a.jpg -1", "id0/a.jpg cat", " 3"])
def test_read_list_file_malformed_line_is_named(tmp_path, line):
    listing = tmp_path / "train.txt"
    listing.write_text(f"ok.jpg 0\n{line}\n")
    with pytest.raises(UserInputError, match=r"line 2: expected 'relative/path label'"):
        read_list_file(listing)


def test_check_labels_and_min_identities():
    index = ImageIndex("/data", ["a/1.jpg", "a/2.jpg", "b/1.jpg"], [0, 0, 5], ["a", "b"])
    check_labels(index, 6)
    with pytest.raises(UserInputError, match=r"1 images with labels outside it, e\.g\. 'b/1.jpg' → 5"):
        check_labels(index, 2)
    check_min_identities(index)
    single = ImageIndex("/data", ["a/1.jpg", "a/2.jpg"], [0, 0], ["George_W_Bush"])
    with pytest.raises(UserInputError, match=r"at least 2 identities.*Received: 1 .*George_W_Bush"):
        check_min_identities(single)


def test_label_map_round_trip(tmp_path):
    path = tmp_path / "run" / "label_map.json"
    save_label_map(path, ["Alice", "Bob"])
    assert json.loads(path.read_text()) == {"num_classes": 2, "class_names": ["Alice", "Bob"]}
    assert load_label_map(path) == ["Alice", "Bob"]
    path.write_text('{"num_classes": 3, "class_names": ["Alice"]}')
    with pytest.raises(UserInputError, match="malformed"):
        load_label_map(path)


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    positions, flips = epoch_order(1000, seed=7, epoch=3)
    assert sorted(positions.tolist()) == list(range(1000))
    assert 400 < flips.sum() < 600
    again = epoch_order(1000, seed=7, epoch=3)
    np.testing.assert_array_equal(positions, again[0])
    np.testing.assert_array_equal(flips, again[1])
    assert not np.array_equal(positions, epoch_order(1000, seed=7, epoch=4)[0])
    assert not np.array_equal(positions, epoch_order(1000, seed=8, epoch=3)[0])
    # Without flips the order is unchanged; without shuffle it is the index order.
    np.testing.assert_array_equal(epoch_order(1000, 7, 3, flip=False)[0], positions)
    assert not epoch_order(1000, 7, 3, flip=False)[1].any()
    np.testing.assert_array_equal(epoch_order(5, 7, 3, shuffle=False)[0], np.arange(5))
    assert steps_per_epoch(1000, 64) == 15


def test_jitter_matrices_are_bounded_similarities_about_the_centre():
    height, width, jitter = 112, 96, 0.1
    matrices = jitter_matrices(2000, seed=7, epoch=3, image_size=(height, width), jitter=jitter)
    assert matrices.shape == (2000, 2, 3)
    (a, b), (c, d) = matrices[:, 0, :2].T, matrices[:, 1, :2].T
    np.testing.assert_allclose(a, d)  # a similarity: [[s cos, -s sin], [s sin, s cos]]
    np.testing.assert_allclose(b, -c)
    scale, angle = np.hypot(a, c), np.degrees(np.arctan2(c, a))
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    shift = matrices[:, :, :2] @ centre + matrices[:, :, 2] - centre
    for values, bound in ((scale - 1, jitter), (angle, 90 * jitter), (shift[:, 0], jitter * width),
                          (shift[:, 1], jitter * height)):
        assert np.abs(values).max() <= bound + 1e-9
        assert np.abs(values).max() > 0.95 * bound  # the whole range is used (uniform draws)
    np.testing.assert_array_equal(matrices, jitter_matrices(2000, 7, 3, (height, width), jitter))
    assert not np.allclose(matrices, jitter_matrices(2000, 7, 4, (height, width), jitter))
    identity = jitter_matrices(5, 7, 3, (height, width), 0.0)
    np.testing.assert_array_equal(identity, np.tile([[1.0, 0, 0], [0, 1, 0]], (5, 1, 1)))
    for bad in (-0.1, 0.5, "0.1", float("nan")):
        with pytest.raises(UserInputError, match=rf"Expected 0 <= jitter < 0.5. Received: jitter={bad!r}"):
            jitter_matrices(5, 7, 3, (height, width), bad)


def test_compose_and_invert_affine_match_3x3_products():
    from keras_sphereface.data.index import compose_affine, invert_affine

    rng = np.random.default_rng(1)
    outer, inner = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 3))
    full = lambda m: np.concatenate([m, np.tile([[[0.0, 0, 1]]], (len(m), 1, 1))], 1)  # noqa: E731
    np.testing.assert_allclose(compose_affine(outer, inner), (full(outer) @ full(inner))[:, :2])
    np.testing.assert_allclose(invert_affine(outer), np.linalg.inv(full(outer))[:, :2])


def test_scan_lfw(lfw_dir):
    index = scan_identity_folder(lfw_dir / "lfw-deepfunneled")
    assert (len(index), index.num_classes) == (13233, 5749)  # shared/data/README.md
    bush = index.class_names.index("George_W_Bush")
    assert int((index.labels == bush).sum()) == 530
