"""A TensorFlow-free loader: `keras.utils.PyDataset` with OpenCV decode in a thread pool.

For the JAX and PyTorch backends on machines without TensorFlow. Same output and the same
per-epoch order and flips as `make_dataset` (both follow `index.epoch_order(seed, epoch)`):
`({"images": uint8 [B, H, W, 3], "labels": int32 [B]}, labels)`. Decoding is the alignment
step's `read_image` (OpenCV; grayscale, RGBA and 16-bit become 8-bit RGB; EXIF orientation
ignored, as TensorFlow and the landmarks do); alignment is `cv2.warpAffine` with the
similarity transforms computed once up front, as `align_face` does per call, composed with the
epoch's jitter when there is one.

For training, one pass serves every epoch left back to back, as tf.data's stream does:
batch i is batch i mod S of epoch `initial_epoch + i // S` (S steps per epoch), a pure
function of i. `fit(loader, epochs=E, initial_epoch=K, steps_per_epoch=S, shuffle=False)`
walks it epoch by epoch (Keras keeps one iterator across epochs when given steps_per_epoch).
No epoch counter follows Keras' hooks, which `fit` calls differently per backend.

Keras' own worker queue is not used (`workers=1` to PyDataset): each of its restarts (after
`fit`'s peek at the first batch, at every epoch end) first serves the batches prefetched in
the previous run, which on JAX shuffled, repeated and dropped batches across epochs. The
loader's own threads decode each batch's images in parallel (OpenCV releases the GIL) and
the next `prefetch` batches while the model trains; being keyed by batch number, a prefetched
batch is right whatever the order of access.
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
        index, batch_size, image_size, landmarks, training, seed, initial_epoch, flip, jitter:
            as in `make_dataset`, except that the pass is finite (`len(self)` batches): training
            serves epochs initial_epoch..epochs-1 (full batches only), evaluation each image
            once in order.
        epochs: the end of training (exclusive, as `fit`'s epochs); default initial_epoch + 1.
        workers: decoding threads (default: one per CPU core); prefetch: batches decoded
            ahead of the one asked for.
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
        epochs=None,
        flip=None,
        jitter=0.0,
        workers=None,
        prefetch=2,
    ):
        super().__init__(workers=1, use_multiprocessing=False)  # no Keras queue: module doc
        if batch_size < 1 or (training and len(index) < batch_size):
            raise UserInputError(
                f"Expected 1 <= batch_size <= number of images ({len(index)}). Received: batch_size={batch_size}"
            )
        epochs = initial_epoch + 1 if epochs is None else epochs
        if training and epochs <= initial_epoch:
            raise UserInputError(
                f"Expected epochs > initial_epoch ({initial_epoch}). Received: epochs={epochs}"
            )
        self.index = index
        self.batch_size = int(batch_size)
        self.image_size = tuple(int(v) for v in image_size)
        self.training = training
        self.flip = training if flip is None else flip
        self.jitter = jitter if training else 0.0
        index_lib.check_jitter(self.jitter)
        self.matrices = None  # per image, source → crop
        if landmarks is not None:
            points = index_lib.resolve_landmarks(index, landmarks)
            self.matrices = index_lib.alignment_matrices(points, self.image_size, index.paths)
        elif self.jitter:
            self.matrices = np.tile(np.eye(3)[:2], (len(index), 1, 1))
        self.seed = seed
        self.initial_epoch, self.epochs = int(initial_epoch), int(epochs)
        self.steps_per_epoch = index_lib.steps_per_epoch(len(index), self.batch_size)
        self.prefetch = int(prefetch)
        self._paths = index.absolute_paths()
        self._orders = {}  # epoch -> (positions, flips, warps or None), the last two epochs
        # not self.workers: PyDataset's, which Keras reads to start its own queue
        self._threads = os.cpu_count() if workers is None else int(workers)
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads)
        self._ahead = {}  # batch number -> (futures of its images, in chunks; flips; labels)

    def __len__(self):
        if self.training:
            return self.steps_per_epoch * (self.epochs - self.initial_epoch)
        return -(-len(self.index) // self.batch_size)

    def epoch_of(self, batch):
        """(epoch, batch within the epoch) of pass batch `batch`."""
        if not self.training:
            return 0, batch
        return self.initial_epoch + batch // self.steps_per_epoch, batch % self.steps_per_epoch

    def _epoch_order(self, epoch):
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            positions, flips = index_lib.epoch_order(
                len(self.index), self.seed, epoch, shuffle=self.training, flip=self.flip
            )
            warps = self.matrices
            if self.jitter:
                moved = index_lib.jitter_matrices(len(self.index), self.seed, epoch, self.image_size, self.jitter)
                warps = index_lib.compose_affine(moved, warps)
            self._orders[epoch] = positions, flips, warps
        return self._orders[epoch]

    def _submit(self, batch):
        epoch, within = self.epoch_of(batch)
        positions, flips, warps = self._epoch_order(epoch)
        chosen = slice(within * self.batch_size, (within + 1) * self.batch_size)
        positions = positions[chosen]
        chunk = -(-len(positions) // self._threads)  # one task per thread: little overhead
        futures = [self._pool.submit(lambda part: [self._load(p, warps) for p in part], positions[i:i + chunk])
                   for i in range(0, len(positions), chunk)]
        return futures, flips[chosen], self.index.labels[positions]

    def _load(self, position, warps):
        try:
            image, _ = read_image(self._paths[position])
        except UnreadableImage as error:
            raise UserInputError(
                f"Expected a readable JPEG/PNG (run validate_images before training). "
                f"Received: {self._paths[position]!r}: {error}"
            ) from None
        if warps is not None:
            height, width = self.image_size
            return cv2.warpAffine(
                image, warps[position], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
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
        wanted = range(batch, min(batch + 1 + self.prefetch, len(self)))
        self._ahead = {b: self._ahead.get(b) or self._submit(b) for b in wanted}
        futures, flips, labels = self._ahead.pop(batch)
        images = np.stack([image for future in futures for image in future.result()])
        images[flips] = images[flips, :, ::-1]
        return {"images": images, "labels": labels}, labels
