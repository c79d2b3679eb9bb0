"""A TensorFlow-free loader: `keras.utils.PyDataset` with OpenCV decode in parallel workers.

For the JAX and PyTorch backends on machines without TensorFlow. Same output and the same
per-epoch order and flips as `make_dataset` (both follow `index.epoch_order(seed, epoch)`):
`({"images": uint8 [B, H, W, 3], "labels": int32 [B]}, labels)`. Decoding is the alignment
step's `read_image` (OpenCV; grayscale, RGBA and 16-bit become 8-bit RGB; EXIF orientation
ignored, as TensorFlow and the landmarks do); alignment is `cv2.warpAffine` with the
similarity transforms computed once up front, as `align_face` does per call.

Workers are threads by default: OpenCV releases the GIL while decoding and warping, and
threads avoid pickling every batch back from a worker process (measured ~2x cheaper per image
on this machine, bench/input_pipeline.py) and forking a multithreaded JAX process.

The epoch whose order is served is set explicitly (`set_epoch`, or the callback of
`epoch_callback()` in `fit`), not counted from Keras' `on_epoch_begin`/`on_epoch_end`:
`fit` calls those a different number of times per backend (it peeks at the data and
resets its iterator before training), which would shift the order by an epoch and break
exact resume. Keras starts its worker pool after the callbacks' `on_epoch_begin`, so
workers (processes too) see the epoch set there. Pass `shuffle=False` to `fit`: the order
is already shuffled here, and Keras' own batch shuffling is unseeded.
"""

import concurrent.futures
import os

import cv2
import keras
import numpy as np

from keras_sphereface.alignment.detect import UnreadableImage, read_image
from keras_sphereface.data import index as index_lib
from keras_sphereface.errors import UserInputError


def decode_problems(paths, image_size=None):
    """{position: reason} for the files OpenCV cannot decode (or of the wrong size), in threads."""

    def shape_of(path):
        try:
            return read_image(path)[0].shape[:2]
        except UnreadableImage as error:
            return str(error)

    problems = {}
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        for position, shape in enumerate(pool.map(shape_of, paths, chunksize=64)):
            if isinstance(shape, str):
                problems[position] = f"cannot be decoded ({shape})"
            elif image_size is not None and tuple(shape) != tuple(image_size):
                problems[position] = (
                    f"is {shape[0]}x{shape[1]}, not an aligned {image_size[0]}x{image_size[1]} crop "
                    f"(align first, or pass landmarks to align on the fly)"
                )
    return problems


class FaceDataset(keras.utils.PyDataset):
    """Batches of aligned faces from an `ImageIndex`, decoded with OpenCV (no TensorFlow).

    Args:
        index, batch_size, image_size, landmarks, training, seed, initial_epoch, flip: as in
            `make_dataset`, except that an epoch is finite here: `len(self)` batches (full
            batches only when training); `set_epoch` moves to another epoch's order.
        workers: parallel loaders (default: one per CPU core).
        use_multiprocessing: processes instead of threads; max_queue_size: as in
            `keras.utils.PyDataset`.
    """

    def __init__(
        self,
        index,
        batch_size,
        image_size=(112, 96),
        landmarks=None,
        training=True,
        seed=0,
        initial_epoch=0,
        flip=None,
        workers=None,
        use_multiprocessing=False,
        max_queue_size=10,
    ):
        workers = os.cpu_count() if workers is None else workers
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if batch_size < 1 or (training and len(index) < batch_size):
            raise UserInputError(
                f"Expected 1 <= batch_size <= number of images ({len(index)}). Received: batch_size={batch_size}"
            )
        self.index = index
        self.batch_size = int(batch_size)
        self.image_size = tuple(int(v) for v in image_size)
        self.matrices = None
        if landmarks is not None:
            points = index_lib.resolve_landmarks(index, landmarks)
            self.matrices = index_lib.alignment_matrices(points, self.image_size, index.paths)
        self.training = training
        self.flip = training if flip is None else flip
        self.seed = seed
        self.epoch = initial_epoch
        self._paths = index.absolute_paths()
        self._order = None  # (epoch, positions, flips), computed once per epoch per process

    def __len__(self):
        if self.training:
            return index_lib.steps_per_epoch(len(self.index), self.batch_size)
        return -(-len(self.index) // self.batch_size)

    def set_epoch(self, epoch):
        """Serve epoch `epoch`'s order and flips (a pure function of seed and epoch)."""
        self.epoch = int(epoch)

    def epoch_callback(self):
        """A callback for `fit` that serves each epoch's own order: `fit(..., callbacks=[...])`."""
        return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: self.set_epoch(epoch))

    def _epoch_order(self):
        if self._order is None or self._order[0] != self.epoch:
            positions, flips = index_lib.epoch_order(
                len(self.index), self.seed, self.epoch, shuffle=self.training, flip=self.flip
            )
            self._order = (self.epoch, positions, flips)
        return self._order[1:]

    def _load(self, position):
        try:
            image, _ = read_image(self._paths[position])
        except UnreadableImage as error:
            raise UserInputError(
                f"Expected a readable JPEG/PNG (run validate_images before training). "
                f"Received: {self._paths[position]!r}: {error}"
            ) from None
        if self.matrices is not None:
            height, width = self.image_size
            return cv2.warpAffine(
                image, self.matrices[position], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
        if image.shape[:2] != self.image_size:
            raise UserInputError(
                f"Expected an aligned {self.image_size[0]}x{self.image_size[1]} crop. "
                f"Received: {image.shape[0]}x{image.shape[1]} in {self._paths[position]!r}"
            )
        return image

    def __getitem__(self, batch):
        if not 0 <= batch < len(self):
            raise IndexError(f"batch {batch} out of range [0, {len(self)})")
        positions, flips = self._epoch_order()
        chosen = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        positions, flips = positions[chosen], flips[chosen]
        images = np.stack([self._load(p) for p in positions])
        images[flips] = images[flips, :, ::-1]
        labels = self.index.labels[positions]
        return {"images": images, "labels": labels}, labels
