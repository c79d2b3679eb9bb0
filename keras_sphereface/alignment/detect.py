"""Read an image robustly and find its face's 5 landmarks with MTCNN.

MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016) from the `mtcnn` package; its weights ship inside the
package, so nothing is downloaded. The landmark order is the template's: left eye, right eye,
nose tip, left mouth corner, right mouth corner (left = smaller x in the image).

When several faces are found, the one whose box centre is nearest the image centre is kept
(the LFW convention: the labelled person is centred). When none is found, the fallback
landmarks are the mean MTCNN landmarks of LFW, placed at the image centre and scaled to the
image's shorter side (`fallback_landmarks`); such images are reported as `fallback`, never
dropped.
"""

import dataclasses

import cv2
import numpy as np

# Mean MTCNN landmarks of LFW deep-funneled faces (250×250 frames), as fractions of the
# shorter image side, relative to the image centre: the mean over the 13,232 of 13,233 LFW
# images with a detected face (mtcnn 1.0.0; keras_sphereface/resources/README.md).
MEAN_LFW_LANDMARKS = np.array(
    [
        [-0.0830, -0.0499],
        [0.0828, -0.0537],
        [0.0009, 0.0460],
        [-0.0703, 0.1322],
        [0.0769, 0.1291],
    ],
    dtype=np.float32,
)

# MTCNN's P-Net looks at 12×12 windows: a smaller image cannot hold a detectable face.
MIN_DETECTABLE_SIDE = 12

_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message is the reason reported in the CSV."""


@dataclasses.dataclass
class Face:
    """One detected face: box (x1, y1, x2, y2), landmarks (5, 2) as (x, y), confidence."""

    box: np.ndarray
    landmarks: np.ndarray
    confidence: float


def decode_image(data):
    """Decode encoded image bytes into RGB uint8 (H, W, 3); return (image, notes).

    Grayscale is replicated to 3 channels, an alpha channel dropped, 16-bit scaled to 8 bits
    (each change is listed in `notes`, which the CSV reports). EXIF orientation is not applied
    (as in TensorFlow's decoders), so landmarks refer to the stored pixel grid. Raises
    `UnreadableImage` with the reason for empty, truncated or undecodable data.
    """
    if len(data) == 0:
        raise UnreadableImage("empty file (0 bytes)")
    if data[:2] == _JPEG_START and _JPEG_END not in data[-1024:]:
        raise UnreadableImage("truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise UnreadableImage("not an image OpenCV can decode (corrupt or unsupported format)")
    notes = []
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes.append("16-bit converted to 8-bit")
    elif image.dtype != np.uint8:
        raise UnreadableImage(f"unsupported pixel type {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
        notes.append("grayscale converted to RGB")
    elif channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        notes.append("alpha channel dropped")
    elif channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise UnreadableImage(f"unsupported number of channels: {channels}")
    return image, notes


def read_image(path):
    """Read `path` as RGB uint8 (H, W, 3); return (image, notes). See `decode_image`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror or error}") from None
    return decode_image(data)


def fallback_landmarks(image_shape):
    """The mean LFW landmarks placed at the centre of an image of `image_shape`, scaled to it."""
    height, width = image_shape[:2]
    centre = np.array([width / 2.0, height / 2.0], dtype=np.float32)
    return centre + MEAN_LFW_LANDMARKS * float(min(height, width))


def central_face(faces, image_shape):
    """The face whose box centre is nearest the image centre (None if `faces` is empty)."""
    if not faces:
        return None
    height, width = image_shape[:2]
    centre = np.array([width / 2.0, height / 2.0])
    distances = [np.linalg.norm((face.box[:2] + face.box[2:]) / 2.0 - centre) for face in faces]
    return faces[int(np.argmin(distances))]


class FaceDetector:
    """MTCNN face + 5-landmark detector: `detector(image)` -> list of `Face`, most confident first.

    `detector.detect_many(images)` runs images of the same shape as one batch (about 4× less
    CPU per image than one by one on 250×250 LFW frames; results are identical, since equal
    shapes need no padding). TensorFlow and the networks load on first use. `threads` bounds
    TensorFlow's thread pools (1 per worker process when aligning a folder with several
    workers); it only takes effect before TensorFlow has run anything in this process.
    """

    def __init__(self, min_face_size=20, threads=None, batch_size=16):
        self.min_face_size = min_face_size
        self.threads = threads
        self.batch_size = batch_size
        self._mtcnn = None

    def _load(self):
        import tensorflow as tf
        from mtcnn import MTCNN

        if self.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(self.threads)
            except RuntimeError:  # TensorFlow already initialised: keep its pools
                pass
        self._mtcnn = MTCNN(device="CPU:0")

    def __call__(self, image):
        """All faces in `image` (RGB uint8, H×W×3), most confident first."""
        return self.detect_many([image])[0]

    def detect_many(self, images):
        """One list of `Face` per image; same-shape images are detected as a batch."""
        faces = [[] for _ in images]
        groups = {}
        for index, image in enumerate(images):
            if min(image.shape[:2]) >= MIN_DETECTABLE_SIDE:
                groups.setdefault(image.shape, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                found = self._detect_batch([images[i] for i in batch])
                if len(batch) > 1 and not any(found):
                    # mtcnn answers "no face" for the whole batch when one stage fails on
                    # it; ask once more image by image before believing it
                    found = [self._detect_batch([images[i]])[0] for i in batch]
                for index, image_faces in zip(batch, found):
                    faces[index] = image_faces
        return faces

    def _detect_batch(self, images):
        if self._mtcnn is None:
            self._load()
        rows = self._mtcnn.detect_faces(
            list(images), output_type="numpy", box_format="xyxy", min_face_size=self.min_face_size
        )
        rows = np.asarray(rows).reshape(-1, 16)
        faces = [[] for _ in images]
        for row in rows[np.argsort(-rows[:, 5], kind="stable")]:
            faces[int(row[0])].append(
                Face(
                    box=row[1:5].astype(np.float32),
                    landmarks=np.stack([row[6:11], row[11:16]], axis=1).astype(np.float32),
                    confidence=float(row[5]),
                )
            )
        return faces
