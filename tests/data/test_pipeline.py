"""tf.data pipeline: decoding of every image kind, alignment parity with OpenCV, flip, order."""

import cv2
import numpy as np
import pytest

from keras_sphereface.alignment.warp import template_for
from keras_sphereface.data import ImageIndex, make_dataset, scan_identity_folder

tf = pytest.importorskip("tensorflow")


def batches(dataset, count):
    iterator = iter(dataset)
    return [tuple(np.asarray(v) for v in (x["images"], x["labels"], y)) for x, y in (next(iterator) for _ in range(count))]


def test_eval_output_is_every_image_in_index_order(crop_tree):
    root, images = crop_tree
    index = scan_identity_folder(root)
    dataset = make_dataset(index, batch_size=5, training=False)
    assert dataset.cardinality() == 3
    spec = dataset.element_spec
    assert spec[0]["images"].dtype == tf.uint8 and spec[0]["labels"].dtype == tf.int32
    got = batches(dataset, 3)
    assert [len(b[0]) for b in got] == [5, 5, 2]
    pixels = np.concatenate([b[0] for b in got])
    labels = np.concatenate([b[1] for b in got])
    np.testing.assert_array_equal(labels, np.concatenate([b[2] for b in got]))
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(pixels, np.stack([images[p] for p in index.paths]))


def test_gray_rgba_16bit_png_and_gray_jpeg_become_8bit_rgb(tmp_path, write_rgb):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (112, 96), dtype=np.uint8)
    rgba = rng.integers(0, 256, (112, 96, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (112, 96, 3), dtype=np.uint16)
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a/gray.png"), gray)
    cv2.imwrite(str(tmp_path / "a/rgba.png"), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
    write_rgb(tmp_path / "a/deep.png", deep)
    smooth_gray = cv2.GaussianBlur(gray, (9, 9), 3)
    cv2.imwrite(str(tmp_path / "a/gray.jpg"), smooth_gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    index = ImageIndex(tmp_path, ["a/gray.png", "a/rgba.png", "a/deep.png", "a/gray.jpg"], [0] * 4, ["a"])
    (out,) = batches(make_dataset(index, batch_size=4, training=False), 1)
    images = out[0]
    np.testing.assert_array_equal(images[0], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(images[1], rgba[..., :3])
    np.testing.assert_array_equal(images[2], (deep >> 8).astype(np.uint8))  # high byte of each sample
    assert np.array_equal(images[3][..., 0], images[3][..., 1]) and np.array_equal(images[3][..., 0], images[3][..., 2])
    assert np.abs(images[3][..., 0].astype(int) - smooth_gray).mean() < 1.0


def test_training_flips_order_and_resume_are_seeded(crop_tree):
    root, images = crop_tree
    index = scan_identity_folder(root)  # 12 images, 2 full batches of 5 per epoch
    steps = 2
    run = batches(make_dataset(index, batch_size=5, seed=3), 3 * steps)
    again = batches(make_dataset(index, batch_size=5, seed=3), 3 * steps)
    for a, b in zip(run, again):
        np.testing.assert_array_equal(a[0], b[0])
    resumed = batches(make_dataset(index, batch_size=5, seed=3, initial_epoch=2), steps)
    for a, b in zip(run[2 * steps :], resumed):
        np.testing.assert_array_equal(a[0], b[0])
    other_seed = batches(make_dataset(index, batch_size=5, seed=4), steps)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(run, other_seed))

    by_pixels = {images[p].tobytes(): (index.labels[i], False) for i, p in enumerate(index.paths)}
    by_pixels.update({images[p][:, ::-1].tobytes(): (index.labels[i], True) for i, p in enumerate(index.paths)})
    flips = 0
    for epoch in range(3):
        seen = []
        for pixels, labels, _ in run[epoch * steps : (epoch + 1) * steps]:
            for image, label in zip(pixels, labels):
                true_label, flipped = by_pixels[image.tobytes()]  # each output is an image or its mirror
                assert label == true_label
                seen.append(image.tobytes() if not flipped else image[:, ::-1].tobytes())
                flips += flipped
        assert len(set(seen)) == 10  # 10 distinct images per epoch, the other 2 dropped
    assert 0 < flips < 30


def test_cache_gives_the_same_batches(crop_tree):
    index = scan_identity_folder(crop_tree[0])
    plain = batches(make_dataset(index, batch_size=4, seed=1), 4)
    cached = batches(make_dataset(index, batch_size=4, seed=1, cache=True), 4)
    for a, b in zip(plain, cached):
        np.testing.assert_array_equal(a[0], b[0])


def similarity_landmarks(scale, angle, shift, size=(112, 96)):
    """Landmarks = the template moved by a known similarity; returns (landmarks, crop→image matrix 3x3)."""
    c, s = np.cos(angle), np.sin(angle)
    to_image = np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]], [0, 0, 1]])
    template = np.hstack([template_for(size), np.ones((5, 1))])
    return (template @ to_image.T)[:, :2].astype(np.float32), to_image


def smooth_image(shape, seed):
    low = np.random.default_rng(seed).integers(0, 256, (shape[0] // 10, shape[1] // 10, 3)).astype(np.uint8)
    return cv2.resize(low, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def expected_crop(image, to_image, size):
    """cv2.warpAffine with the forward (image → crop) matrix, edges replicated."""
    forward = np.linalg.inv(to_image)[:2]
    return cv2.warpAffine(image, forward, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("size", [(112, 96), (112, 112)])
def test_alignment_matches_cv2_warp_affine(tmp_path, size, write_rgb):
    # Face 1: centred, rotated 20°; face 2: half outside the left edge (edge pixels replicated).
    poses = [(1.4, np.deg2rad(20), (60.0, 40.0)), (1.2, np.deg2rad(-10), (-50.0, 70.0))]
    paths, landmarks, expected = [], {}, []
    for k, (scale, angle, shift) in enumerate(poses):
        for ext, params in ((".png", []), (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100])):
            image = smooth_image((250, 240), seed=k)
            relpath = f"p/{k}{ext}"
            write_rgb(tmp_path / relpath, image, flags=params)
            points, to_image = similarity_landmarks(scale, angle, shift, size)
            paths.append(relpath)
            landmarks[relpath] = points
            decoded = cv2.imread(str(tmp_path / relpath))[..., ::-1]
            expected.append(expected_crop(np.ascontiguousarray(decoded), to_image, size))
    index = ImageIndex(tmp_path, paths, [0] * len(paths), ["p"])
    (out,) = batches(make_dataset(index, 4, image_size=size, landmarks=landmarks, training=False), 1)
    for relpath, got, want in zip(paths, out[0], expected):
        difference = np.abs(got.astype(int) - want)
        # OpenCV interpolates in 1/32 pixel steps, TF in float: off by 1-2 levels, rarely.
        assert difference.max() <= 2 and difference.mean() <= 0.1, (relpath, difference.max(), difference.mean())


def test_landmarks_file_and_missing_landmarks(tmp_path, crop_tree):
    from keras_sphereface.alignment.landmarks import write_landmarks_file
    from keras_sphereface.errors import UserInputError

    index = scan_identity_folder(crop_tree[0])
    points, _ = similarity_landmarks(1.0, 0.0, (0.0, 0.0))
    write_landmarks_file(tmp_path / "marks.txt", {p: points for p in index.paths[:-1]})
    with pytest.raises(UserInputError, match=r"none for 1 of 12 images, e\.g\. \['Carol/Carol_0003.png'\]"):
        make_dataset(index, 4, landmarks=tmp_path / "marks.txt")
    write_landmarks_file(tmp_path / "marks.txt", {p: points for p in index.paths})
    (out,) = batches(make_dataset(index, 12, landmarks=tmp_path / "marks.txt", training=False), 1)
    # The file keeps 2 decimals: nearly the identity; OpenCV's own least-squares fit gives the expectation.
    stored = np.loadtxt(tmp_path / "marks.txt", usecols=range(1, 11), comments="#")[0].reshape(5, 2)
    forward, _ = cv2.estimateAffinePartial2D(stored, template_for((112, 96)), method=cv2.LMEDS)
    for relpath, got in zip(index.paths, out[0]):
        want = cv2.warpAffine(crop_tree[1][relpath], forward, (96, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert np.abs(got.astype(int) - want).max() <= 2


def cv2_warp(image, forward, size):
    return cv2.warpAffine(image, forward, (size[1], size[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("aligned", [True, False])
def test_jitter_is_one_warp_of_jitter_after_alignment(tmp_path, write_rgb, aligned):
    from keras_sphereface.data import epoch_order, jitter_matrices

    size, jitter, seed = (112, 96), 0.1, 5
    paths, landmarks, images, alignments = [], {}, [], []
    for k in range(6):
        if aligned:  # already-aligned crops: the alignment is the identity
            image, to_image = smooth_image(size, seed=k), np.eye(3)
        else:
            image = smooth_image((250, 240), seed=k)
            points, to_image = similarity_landmarks(1.3, np.deg2rad(10 * k - 20), (50.0 + 5 * k, 40.0), size)
            landmarks[f"p/{k}.png"] = points
        write_rgb(tmp_path / f"p/{k}.png", image)
        paths.append(f"p/{k}.png")
        images.append(image)
        alignments.append(np.linalg.inv(to_image))  # image → crop, 3x3
    index = ImageIndex(tmp_path, paths, [0] * len(paths), ["p"])
    dataset = make_dataset(index, 3, image_size=size, landmarks=landmarks or None, seed=seed, jitter=jitter)
    out = batches(dataset, 4)  # epochs 0 and 1, 2 batches each
    for epoch in (0, 1):
        positions, flips = epoch_order(len(index), seed, epoch)
        moved = jitter_matrices(len(index), seed, epoch, size, jitter)
        got = np.concatenate([out[2 * epoch][0], out[2 * epoch + 1][0]])
        for image_out, position, flip in zip(got, positions, flips):
            forward = (np.vstack([moved[position], [0, 0, 1]]) @ alignments[position])[:2]
            want = cv2_warp(images[position], forward, size)
            want = want[:, ::-1] if flip else want
            difference = np.abs(image_out.astype(int) - want)
            assert difference.max() <= 2 and difference.mean() <= 0.1, (epoch, position, difference.max())
    plain = batches(make_dataset(index, 3, image_size=size, landmarks=landmarks or None, seed=seed), 1)
    assert np.abs(plain[0][0].astype(int) - out[0][0]).mean() > 5  # the jitter moved the faces
    # evaluation never jitters
    (evaluated,) = batches(make_dataset(index, 6, image_size=size, landmarks=landmarks or None,
                                        training=False, jitter=jitter), 1)
    for image_out, image, alignment in zip(evaluated[0], images, alignments):
        assert np.abs(image_out.astype(int) - cv2_warp(image, alignment[:2], size)).max() <= 2
