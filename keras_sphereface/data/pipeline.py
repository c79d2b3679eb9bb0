"""tf.data input pipeline: image files → aligned uint8 RGB batches for `model.fit`.

Per image, in parallel: read, decode (JPEG with libjpeg-turbo's accurate integer DCT; PNG, gray,
RGBA and 16-bit PNG all come out as 8-bit RGB), and either check the size of an already-aligned
crop or align on the fly. Alignment uses the similarity transform of the 5 landmarks onto the
SphereFace template, computed once per image in NumPy (`index.alignment_matrices`); a JPEG is decoded
only inside the window the warp reads (`decode_and_crop_jpeg`), then warped with TF's bilinear
projective transform (edge pixels replicated, as `cv2.BORDER_REPLICATE`), then flipped when the
epoch's coin says so. The order and flips of every epoch come from `index.epoch_order(seed, epoch)`;
the optional jitter (`index.jitter_matrices`) is composed with the alignment, so the one warp
does both (already-aligned crops are then warped with the jitter alone).

Output elements: `({"images": uint8 [B, H, W, 3], "labels": int32 [B]}, labels)`, which Keras
accepts on every backend (TensorFlow, JAX, PyTorch).
"""

import math
import re

import numpy as np
import tensorflow as tf

from keras_sphereface.data import index as index_lib
from keras_sphereface.errors import UserInputError

_JPEG_MAGIC = b"\xff\xd8\xff"


# The accurate integer DCT decodes exactly as OpenCV does (so tf.data, the PyDataset loader and
# evaluation see the same pixels) and measured as fast as INTEGER_FAST here (libjpeg-turbo SIMD).
_DCT_METHOD = "INTEGER_ACCURATE"


def _decode_rgb(data):
    # DecodeJpeg sniffs the format: PNG (8/16-bit, gray, RGBA) also comes out as uint8 RGB.
    return tf.io.decode_jpeg(data, channels=3, dct_method=_DCT_METHOD)


def decode_problems(paths, image_size=None):
    """{position: reason} for the files TensorFlow cannot decode (or of the wrong size).

    One parallel tf.data pass: a JPEG is entropy-decoded at 1/8 scale (every Huffman code is
    still read, so corrupt or truncated data fails as it would in training), a PNG in full.
    Failing positions are found with `ignore_errors`; only those are decoded again eagerly
    to get their error message.
    """
    if not paths:
        return {}

    def check(position, path):
        data = tf.io.read_file(path)
        is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), _JPEG_MAGIC)
        shape = tf.cond(
            is_jpeg,
            # the 1/8-scale decode only has to succeed; its shape is multiplied by 0
            lambda: tf.image.extract_jpeg_shape(data)[:2] + 0 * tf.shape(tf.io.decode_jpeg(data, ratio=8))[:2],
            lambda: tf.shape(_decode_rgb(data))[:2],
        )
        return position, shape

    dataset = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), list(paths)))
        .map(check, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(4096)
    )
    shapes = np.full((len(paths), 2), -1, dtype=np.int64)
    for positions, batch_shapes in dataset.as_numpy_iterator():
        shapes[positions] = batch_shapes
    problems = {}
    for position in np.flatnonzero(shapes[:, 0] < 0):
        try:
            _decode_rgb(tf.io.read_file(paths[position]))
            problems[int(position)] = "cannot be decoded"
        except tf.errors.OpError as error:
            reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", error.message.splitlines()[0]).strip()
            problems[int(position)] = f"cannot be decoded ({reason})"
    if image_size is not None:
        for position in np.flatnonzero((shapes[:, 0] >= 0) & np.any(shapes != image_size, axis=1)):
            height, width = shapes[position]
            problems[int(position)] = (
                f"is {height}x{width}, not an aligned {image_size[0]}x{image_size[1]} crop "
                f"(align first, or pass landmarks to align on the fly)"
            )
    return problems


def _crop_bounds(inverse, image_size):
    """[N, 4] = x_min, x_max, y_min, y_max of the source region the warp samples (unclipped)."""
    height, width = image_size
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)
    source = np.einsum("nij,kj->nki", inverse, corners)  # [N, 4 corners, (x, y)]
    return np.stack(
        [
            np.floor(source[..., 0].min(1)) - 1,
            np.ceil(source[..., 0].max(1)) + 1,
            np.floor(source[..., 1].min(1)) - 1,
            np.ceil(source[..., 1].max(1)) + 1,
        ],
        axis=1,
    ).astype(np.int32)


def _warp(data, inverse, bounds, image_size):
    """Decode `data` and warp it with the crop→source affine `inverse` [2, 3] to `image_size`."""

    def jpeg_window():
        shape = tf.image.extract_jpeg_shape(data)
        y0 = tf.clip_by_value(bounds[2], 0, shape[0] - 1)
        y1 = tf.clip_by_value(bounds[3], y0, shape[0] - 1)
        x0 = tf.clip_by_value(bounds[0], 0, shape[1] - 1)
        x1 = tf.clip_by_value(bounds[1], x0, shape[1] - 1)
        window = tf.stack([y0, x0, y1 - y0 + 1, x1 - x0 + 1])
        image = tf.io.decode_and_crop_jpeg(data, window, channels=3, dct_method=_DCT_METHOD)
        return image, tf.cast(tf.stack([x0, y0]), tf.float32)

    def whole_image():
        return _decode_rgb(data), tf.zeros([2], tf.float32)

    image, offset = tf.cond(
        tf.equal(tf.strings.substr(data, 0, 3), _JPEG_MAGIC), jpeg_window, whole_image
    )
    transform = tf.concat(
        [inverse[0, :2], inverse[0, 2:] - offset[:1], inverse[1, :2], inverse[1, 2:] - offset[1:], [0.0, 0.0]],
        axis=0,
    )
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=transform[None],
        output_shape=tf.constant(image_size, tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )[0]
    return tf.cast(tf.round(warped), tf.uint8)


def _epoch_plans(num_images, batch_size, seed, initial_epoch, flip, sampling, image_size):
    """Endless (position, flip[, inverse, bounds]) stream: epoch e is `epoch_order(seed, e)` cut
    to full batches. `sampling(positions, epoch)`, if given, is each image's crop → source
    map [K, 2, 3] in that epoch; the source window it reads comes with it."""
    keep = index_lib.steps_per_epoch(num_images, batch_size) * batch_size
    types, shapes = (tf.int64, tf.bool), ([keep], [keep])
    if sampling is not None:
        types, shapes = types + (tf.float32, tf.int32), shapes + ([keep, 2, 3], [keep, 4])

    def plan(epoch):
        positions, flips = index_lib.epoch_order(num_images, seed, int(epoch), shuffle=True, flip=flip)
        positions, flips = positions[:keep], flips[:keep]
        if sampling is None:
            return positions, flips
        inverse = sampling(positions, int(epoch))
        return positions, flips, inverse.astype(np.float32), _crop_bounds(inverse, image_size)

    def one_epoch(epoch):
        columns = tf.numpy_function(plan, [epoch], types, stateful=False)
        return tf.data.Dataset.from_tensor_slices(
            tuple(tf.ensure_shape(column, shape) for column, shape in zip(columns, shapes))
        )

    return tf.data.Dataset.range(initial_epoch, 2**62).flat_map(one_epoch)


def make_dataset(
    index,
    batch_size,
    image_size=(112, 96),
    landmarks=None,
    training=True,
    seed=0,
    initial_epoch=0,
    flip=None,
    jitter=0.0,
    cache=False,
    deterministic=True,
):
    """A tf.data.Dataset of `({"images": uint8 [B,H,W,3], "labels": int32 [B]}, labels)`.

    Args:
        index: an `ImageIndex` (from `scan_identity_folder` / `read_list_file`; run
            `validate_images` first so bad files are reported before training).
        batch_size: images per batch.
        image_size: (height, width) of the aligned crops, (112, 96) or (112, 112).
        landmarks: None for already-aligned crops of `image_size` (decoded as they are), or a
            landmarks file / {relative_path: (5, 2)} dict to align the originals on the fly.
        training: True: an endless stream of epochs starting at `initial_epoch`, epoch e
            shuffled and flipped by `epoch_order(seed, e)` and cut to full batches; pass
            `steps_per_epoch=steps_per_epoch(len(index), batch_size)` and `initial_epoch` to
            `fit` (a resumed run then sees exactly the same batches). False: one pass in index
            order, no flip, no jitter, the last batch partial.
        flip: random horizontal flip (default: `training`).
        jitter: random similarity per image and epoch (`index.jitter_matrices`: scale
            1 ± j, rotation ± j·90°, shift ± j·size), folded into the alignment's warp, so an
            image is interpolated once; aligned crops are warped with it. 0: none.
        cache: read every encoded file into memory once, now, in parallel (then no file I/O;
            memory = the files' total size, e.g. ~2.5 GB for CASIA-WebFace crops).
        deterministic: keep element order under parallel decode (required for exact resume).
    """
    image_size = tuple(int(v) for v in image_size)
    flip = training if flip is None else flip
    jitter = jitter if training else 0.0
    index_lib.check_jitter(jitter)
    if batch_size < 1 or (training and len(index) < batch_size):
        raise UserInputError(
            f"Expected 1 <= batch_size <= number of images ({len(index)}). Received: batch_size={batch_size}"
        )
    paths = tf.constant(index.absolute_paths())
    labels = tf.constant(index.labels, tf.int32)

    sampling = None
    if landmarks is not None or jitter:
        forward = np.tile(np.eye(3)[:2], (len(index), 1, 1))  # aligned crops: the identity
        if landmarks is not None:
            points = index_lib.resolve_landmarks(index, landmarks)
            forward = index_lib.alignment_matrices(points, image_size, index.paths)

        if jitter:
            def sampling(positions, epoch):
                """The crop → source maps the warp samples with: (jitter ∘ alignment)⁻¹."""
                moved = index_lib.jitter_matrices(len(index), seed, epoch, image_size, jitter)
                return index_lib.invert_affine(index_lib.compose_affine(moved[positions], forward[positions]))
        else:
            inverse = index_lib.invert_affine(forward)  # the same every epoch: inverted once

            def sampling(positions, epoch):
                return inverse[positions]

    if cache:
        encoded = tf.Variable(_read_all(paths), trainable=False)

        def read(position):
            return tf.gather(encoded, position)  # a ResourceGather: copies one string only
    else:
        def read(position):
            return tf.io.read_file(paths[position])

    if training:
        plans = _epoch_plans(len(index), batch_size, seed, initial_epoch, flip, sampling, image_size)
    else:
        positions = np.arange(len(index), dtype=np.int64)
        columns = (positions, np.zeros(len(index), dtype=bool))
        if sampling is not None:
            inverse = sampling(positions, 0)
            columns += (inverse.astype(np.float32), _crop_bounds(inverse, image_size))
        plans = tf.data.Dataset.from_tensor_slices(columns)

    def load_element(position, flip_it, *warp):
        if warp:
            image = _warp(read(position), *warp, image_size)
        else:
            image = tf.ensure_shape(_decode_rgb(read(position)), image_size + (3,))
        if flip:  # per image: measured cheaper than a select over the whole batch
            image = tf.cond(flip_it, lambda: tf.reverse(image, axis=[1]), lambda: image)
        return image, labels[position]

    def pack(images, batch_labels):
        return {"images": images, "labels": batch_labels}, batch_labels

    dataset = (
        plans.map(load_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        .batch(batch_size, drop_remainder=training)
        .map(pack)
        .prefetch(tf.data.AUTOTUNE)
    )
    if not training:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(len(index) / batch_size)))
    return dataset


def _read_all(paths):
    """All files' bytes as a string tensor, read by a parallel tf.data pass."""
    reads = tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE)
    return tf.concat(list(reads.batch(4096)), axis=0)
