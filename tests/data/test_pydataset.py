"""The TF-free PyDataset loader: same batches as the tf.data pipeline, threads, epochs."""

import cv2
import keras
import numpy as np
import pytest

from keras_sphereface.data import FaceDataset, ImageIndex, epoch_order, scan_identity_folder
from keras_sphereface.errors import UserInputError


def jpeg_tree(root, images):
    """The PNG crops of `crop_tree` re-encoded as JPEG beside them (a second index)."""
    for relpath, rgb in images.items():
        cv2.imwrite(str(root / relpath.replace(".png", ".jpg")), np.ascontiguousarray(rgb[..., ::-1]))
    index = scan_identity_folder(root)
    return index.select(np.array([p.endswith(".jpg") for p in index.paths]))


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_same_batches_as_tf_data(crop_tree, kind):
    tf = pytest.importorskip("tensorflow")
    from keras_sphereface.data import make_dataset

    root, images = crop_tree
    index = scan_identity_folder(root) if kind == "png" else jpeg_tree(root, images)
    loader = FaceDataset(index, batch_size=5, seed=11, epochs=2)  # both epochs in one pass
    stream = iter(make_dataset(index, batch_size=5, seed=11))
    assert len(loader) == 2 * (len(index) // 5)
    for batch in range(len(loader)):
        (ours, our_labels), (theirs, their_labels) = loader[batch], next(stream)
        assert ours["images"].dtype == np.uint8 and ours["labels"].dtype == np.int32
        np.testing.assert_array_equal(ours["images"], theirs["images"].numpy())
        np.testing.assert_array_equal(our_labels, their_labels.numpy())
    resumed = FaceDataset(index, batch_size=5, seed=11, initial_epoch=1, epochs=2)
    steps = len(index) // 5
    for batch in range(steps):  # a resumed run's pass starts at epoch 1
        np.testing.assert_array_equal(resumed[batch][0]["images"],
                                      loader[steps + batch][0]["images"])
    evaluation = list(make_dataset(index, batch_size=5, training=False))
    loader = FaceDataset(index, batch_size=5, training=False)
    assert len(loader) == len(evaluation) == 3
    for batch, (theirs, _) in enumerate(evaluation):
        np.testing.assert_array_equal(loader[batch][0]["images"], theirs["images"].numpy())


def test_alignment_close_to_tf_data(tmp_path):
    pytest.importorskip("tensorflow")
    from keras_sphereface.data import make_dataset

    rng = np.random.default_rng(2)
    low = rng.integers(0, 256, (25, 25, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "face.jpg"), cv2.resize(low, (250, 250), interpolation=cv2.INTER_CUBIC))
    landmarks = {"face.jpg": np.array([[100, 110], [150, 105], [127, 140], [105, 165], [148, 162]], np.float32)}
    index = ImageIndex(tmp_path, ["face.jpg"], [0], ["a"])
    ours = FaceDataset(index, 1, landmarks=landmarks, training=False)[0][0]["images"]
    theirs = next(iter(make_dataset(index, 1, landmarks=landmarks, training=False)))[0]["images"].numpy()
    difference = np.abs(ours.astype(int) - theirs)
    assert difference.max() <= 2 and difference.mean() <= 0.1


@pytest.mark.multi_backend
def test_epochs_flips_and_any_order_of_access(crop_tree):
    root, images = crop_tree
    index = scan_identity_folder(root)
    loader = FaceDataset(index, batch_size=4, seed=5, epochs=2, workers=2)
    assert len(loader) == 6 and [loader.epoch_of(b) for b in (0, 2, 3, 5)] == [(0, 0), (0, 2), (1, 0), (1, 2)]
    epoch0 = [loader[i] for i in range(3)]
    by_pixels = {images[p].tobytes(): (label, False) for p, label in zip(index.paths, index.labels)}
    by_pixels.update({images[p][:, ::-1].tobytes(): (label, True) for p, label in zip(index.paths, index.labels)})
    seen = [by_pixels[image.tobytes()] for x, _ in epoch0 for image in x["images"]]
    assert [label for label, _ in seen] == np.concatenate([y for _, y in epoch0]).tolist()
    assert 0 < sum(flipped for _, flipped in seen) < 12
    order, flips = epoch_order(len(index), 5, 1)  # epoch 1, written out from its definition
    expected1 = [images[index.paths[p]][:, ::-1] if f else images[index.paths[p]] for p, f in zip(order, flips)]
    # jumping around (prefetched batches are keyed by number, so any order gives the same)
    for batch in (5, 3, 0, 4, 4, 1):
        x, y = loader[batch]
        epoch, within = loader.epoch_of(batch)
        want = epoch0[within][0]["images"] if epoch == 0 else np.stack(expected1[4 * within:4 * within + 4])
        np.testing.assert_array_equal(x["images"], want)

    # Through Keras (what fit/predict use): the pass in order, both epochs.
    inputs = {
        "images": keras.Input((112, 96, 3), dtype="uint8", name="images"),
        "labels": keras.Input((), dtype="int32", name="labels"),
    }
    checksum = keras.ops.sum(keras.ops.cast(inputs["images"], "float32"), axis=(1, 2, 3))
    model = keras.Model(inputs, checksum)
    expected = np.concatenate([x["images"].astype(np.float64).sum(axis=(1, 2, 3)) for x, _ in (loader[i] for i in range(6))])
    np.testing.assert_allclose(model.predict(loader, verbose=0), expected)
    np.testing.assert_allclose(model.predict(loader, verbose=0), expected)  # and again
    assert not np.allclose(expected[:12], expected[12:])


@pytest.mark.multi_backend
def test_unreadable_file_in_a_batch_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image")
    loader = FaceDataset(ImageIndex(tmp_path, ["a/broken.jpg"], [0], ["a"]), 1, training=False)
    with pytest.raises(UserInputError, match="broken.jpg"):
        loader[0]


@pytest.mark.multi_backend
@pytest.mark.parametrize("aligned", [True, False])
def test_jitter_is_one_warp_of_jitter_after_alignment(tmp_path, aligned):
    from keras_sphereface.data import jitter_matrices

    size, jitter, seed = (112, 96), 0.1, 4
    rng = np.random.default_rng(3)
    paths, landmarks, images, alignments = [], {}, [], []
    for k in range(4):
        shape = size if aligned else (250, 250)
        image = cv2.resize(rng.integers(0, 256, (20, 20, 3)).astype(np.uint8), shape[::-1])
        cv2.imwrite(str(tmp_path / f"{k}.png"), image[..., ::-1])
        if aligned:
            alignment = np.eye(3)
        else:  # the template scaled by 1.5 and shifted: image → crop is the inverse
            from keras_sphereface.alignment.warp import template_for

            landmarks[f"{k}.png"] = template_for(size) * 1.5 + [20.0 + 10 * k, 30.0]
            alignment = np.array([[1 / 1.5, 0, -(20.0 + 10 * k) / 1.5], [0, 1 / 1.5, -30.0 / 1.5], [0, 0, 1]])
        paths.append(f"{k}.png")
        images.append(image)
        alignments.append(alignment)
    index = ImageIndex(tmp_path, paths, [0] * 4, ["a"])
    loader = FaceDataset(index, 2, landmarks=landmarks or None, seed=seed, epochs=2, jitter=jitter)
    for batch in range(len(loader)):
        epoch, within = loader.epoch_of(batch)
        positions, flips = epoch_order(4, seed, epoch)
        moved = jitter_matrices(4, seed, epoch, size, jitter)
        for got, position, flip in zip(loader[batch][0]["images"], positions[2 * within:], flips[2 * within:]):
            forward = (np.vstack([moved[position], [0, 0, 1]]) @ alignments[position])[:2]
            want = cv2.warpAffine(images[position], forward, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            want = want[:, ::-1] if flip else want
            assert np.abs(got.astype(int) - want).max() <= 1, (batch, position)
    evaluation = FaceDataset(index, 4, landmarks=landmarks or None, training=False, jitter=jitter)
    for got, image, alignment in zip(evaluation[0][0]["images"], images, alignments):
        want = cv2.warpAffine(image, alignment[:2], (size[1], size[0]), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(got.astype(int) - want).max() <= 1  # evaluation never jitters
