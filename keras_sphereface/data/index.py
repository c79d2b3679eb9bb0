"""Which images a training run reads, with which labels, in which order.

An :class:`ImageIndex` is built from an identity-folder tree (one folder per person, like
LFW: `ROOT/NAME/*.jpg`) or from a list file (`relative/path label` per line, CASIA-WebFace
style). It holds paths relative to `root`, int32 labels and the class names (class index →
identity name), which are saved beside the run as `label_map.json`.

Both loaders (tf.data in `pipeline.py`, the TF-free `PyDataset` in `pydataset.py`) take
their per-epoch order from :func:`epoch_order`, a pure function of (seed, epoch): a resumed
run sees exactly the images and flips that an uninterrupted run would have seen.
"""

import dataclasses
import json
import logging
import os

import numpy as np

from keras_sphereface.atomic import atomic_path
from keras_sphereface.errors import UserInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MAX_LISTED = 20  # unreadable files named in an error message; the count is always given

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageIndex:
    """Images of a data set: `paths` relative to `root`, `labels` (int32), `class_names`."""

    root: str
    paths: tuple
    labels: np.ndarray
    class_names: tuple

    def __post_init__(self):
        object.__setattr__(self, "root", os.path.abspath(os.fspath(self.root)))
        object.__setattr__(self, "paths", tuple(self.paths))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int32))
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self):
        return len(self.paths)

    @property
    def num_classes(self):
        return len(self.class_names)

    def absolute_paths(self):
        return [os.path.join(self.root, p) for p in self.paths]

    def select(self, positions):
        """A sub-index of the images at `positions` (boolean mask or integers), same classes."""
        positions = np.arange(len(self))[np.asarray(positions)]
        return ImageIndex(
            self.root, [self.paths[i] for i in positions], self.labels[positions], self.class_names
        )


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_identity_folder(root):
    """Index `root/NAME/*.{jpg,jpeg,png}`: one class per sub-folder, sorted by name.

    Sub-folders without images get no class (and are logged); images lying directly in
    `root` are an error, since they usually mean `root` is one person's folder.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise UserInputError(
            f"Expected a folder with one sub-folder of images per identity. "
            f"Received: {root!r}, which is not a folder."
        )
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        raise UserInputError(
            f"Expected a folder with one sub-folder of images per identity (ROOT/NAME/*.jpg). "
            f"Received: {root!r} holding {len(loose)} images directly (e.g. {loose[0]!r}); "
            f"is it a single identity's folder?"
        )
    paths, labels, class_names, empty = [], [], [], []
    for entry in entries:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        names = sorted(f.name for f in os.scandir(entry.path) if f.is_file() and _is_image(f.name))
        if not names:
            empty.append(entry.name)
            continue
        paths.extend(f"{entry.name}/{name}" for name in names)
        labels.extend([len(class_names)] * len(names))
        class_names.append(entry.name)
    if empty:
        logger.info("%d identity folders hold no images and get no class: %s", len(empty), empty)
    if not paths:
        raise UserInputError(
            f"Expected identity sub-folders holding {'/'.join(IMAGE_EXTENSIONS)} images. "
            f"Received: {root!r} with no such images."
        )
    return ImageIndex(root, paths, labels, class_names)


def read_list_file(path, root=None, class_names=None):
    """Index a list file of `relative/path label` lines (label: integer class index ≥ 0).

    Paths are relative to `root` (default: the list file's folder); a path may contain
    spaces (the label is the last field); '#' starts a comment line. `class_names` (e.g.
    from :func:`load_label_map`) names the classes; by default class i is named "i" and the
    number of classes is max(label) + 1, and labels leaving more than half of those classes
    without images are refused (a typo, not a data set).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserInputError(f"Expected an existing list file ('relative/path label' lines). Received: {path!r}")
    root = os.path.dirname(os.path.abspath(path)) if root is None else os.fspath(root)
    paths, labels, numbers = [], [], []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            relpath, _, label = line.rpartition(" ")
            relpath = relpath.strip()
            if not relpath or not label.isdigit():
                raise UserInputError(
                    f"{path}, line {number}: expected 'relative/path label' with an integer "
                    f"label >= 0. Received: {line!r}"
                )
            paths.append(relpath)
            labels.append(int(label))
            numbers.append(number)
    if not paths:
        raise UserInputError(f"Expected at least one 'relative/path label' line. Received: empty list file {path!r}")
    if class_names is None:
        present, top = set(labels), max(labels)
        if top + 1 > 2 * len(present):  # a typo'd label 99999 would make a 100000-class head
            raise UserInputError(
                f"{path}, line {numbers[labels.index(top)]}: expected labels 0..N-1 for N "
                f"identities, most of them used (or class names from a label map). Received: "
                f"label {top}, so {top + 1} classes of which only {len(present)} have images"
            )
        class_names = [str(i) for i in range(max(labels) + 1)]
    index = ImageIndex(root, paths, labels, class_names)
    check_labels(index, index.num_classes)
    return index


def check_labels(index, num_classes):
    """Raise UserInputError unless every label is in [0, num_classes), naming the first offenders."""
    bad = np.flatnonzero((index.labels < 0) | (index.labels >= num_classes))
    if bad.size:
        examples = ", ".join(f"{index.paths[i]!r} → {index.labels[i]}" for i in bad[:5])
        raise UserInputError(
            f"Expected labels in [0, {num_classes}) (num_classes={num_classes}). "
            f"Received: {bad.size} images with labels outside it, e.g. {examples}."
        )


def check_min_identities(index, minimum=2):
    """Raise UserInputError when `index` has fewer than `minimum` identities with images."""
    present = np.unique(index.labels)
    if present.size < minimum:
        names = [index.class_names[i] for i in present]
        raise UserInputError(
            f"Expected at least {minimum} identities (one sub-folder or label per person) to "
            f"train a classifier. Received: {present.size} in {index.root!r}: {names}."
        )


def save_label_map(path, class_names):
    """Write `label_map.json` atomically: {"num_classes": N, "class_names": [name of 0, ...]}."""
    class_names = [str(n) for n in class_names]
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump({"num_classes": len(class_names), "class_names": class_names}, f, indent=1)


def load_label_map(path):
    """Read a label map written by :func:`save_label_map`; returns the list of class names."""
    try:
        with open(path) as f:
            content = json.load(f)
        names = content["class_names"]
        if not isinstance(names, list) or len(names) != content["num_classes"]:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise UserInputError(
            f"Expected a label map JSON {{'num_classes': N, 'class_names': [N names]}}. "
            f"Received: {path!r}, which is missing or malformed."
        ) from None
    return [str(n) for n in names]


def sniff_format(head):
    """'jpeg', 'png' or None from the first bytes of a file."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def header_problem(path):
    """Why the file at `path` cannot be a JPEG/PNG judging from its first bytes, or None.

    About 10 µs a file: catches missing, unreadable, empty and non-image files; truncated or
    corrupt image data is left to the decode check.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head:
        return "is empty (0 bytes)"
    if sniff_format(head) is None:
        return f"is not a JPEG or PNG (starts with {head!r})"
    return None


def validate_images(index, skip_bad=False, decoder="tensorflow", image_size=None):
    """Check every image once before training: report unreadable files by name and count.

    A header check (:func:`header_problem`) is followed by one decode per file with the
    decoder the loader will use ("tensorflow": JPEGs entropy-decoded at 1/8 scale, which
    still walks every Huffman code; "opencv": `cv2.imdecode`), in parallel. With
    `image_size` = (height, width) every image must have that size (already-aligned crops).

    Returns `(index, skipped)`: with `skip_bad=False` any bad file raises UserInputError
    listing them; with `skip_bad=True` they are dropped, each logged as a warning, and
    `skipped` lists (relative path, reason).
    """
    problems = {}
    paths = index.absolute_paths()
    for i, path in enumerate(paths):
        reason = header_problem(path)
        if reason:
            problems[i] = reason
    todo = [i for i in range(len(paths)) if i not in problems]
    if decoder == "tensorflow":
        from keras_sphereface.data.pipeline import decode_problems
    elif decoder == "opencv":
        from keras_sphereface.data.pydataset import decode_problems
    else:
        raise UserInputError(f"Expected decoder 'tensorflow' or 'opencv'. Received: {decoder!r}")
    found = decode_problems([paths[i] for i in todo], image_size)
    problems.update({todo[j]: reason for j, reason in found.items()})
    skipped = [(index.paths[i], problems[i]) for i in sorted(problems)]
    if skipped and not skip_bad:
        listed = "\n".join(f"  {p}: {r}" for p, r in skipped[:_MAX_LISTED])
        more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
        raise UserInputError(
            f"Expected every image under {index.root!r} to be a readable JPEG/PNG"
            f"{'' if image_size is None else ' of size %dx%d' % tuple(image_size)}. "
            f"Received: {len(skipped)} bad of {len(index)} files (fix them, or skip them "
            f"explicitly with skip_bad=True / --skip-bad):\n{listed}{more}"
        )
    for relpath, reason in skipped:
        logger.warning("Skipping %s: %s", relpath, reason)
    if skipped:
        index = index.select(np.array([i not in problems for i in range(len(index))], dtype=bool))
    return index, skipped


def steps_per_epoch(num_images, batch_size):
    """Full batches per training epoch (the last partial batch is dropped, reshuffled next epoch)."""
    return num_images // batch_size


def epoch_order(num_images, seed, epoch, shuffle=True, flip=True):
    """(positions int64 [N], flip bool [N]) for `epoch`, a pure function of (seed, epoch).

    NumPy's PCG64 seeded with (seed, epoch) gives the permutation and the per-image
    horizontal-flip coin, identical in both loaders and after a resume.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    positions = rng.permutation(num_images) if shuffle else np.arange(num_images)
    flips = rng.random(num_images) < 0.5 if flip else np.zeros(num_images, dtype=bool)
    return positions.astype(np.int64), flips


def check_jitter(jitter):
    """A UserInputError unless 0 <= `jitter` < 0.5 (the range of `jitter_matrices`)."""
    if not (isinstance(jitter, (int, float)) and 0 <= jitter < 0.5):
        raise UserInputError(f"Expected 0 <= jitter < 0.5. Received: jitter={jitter!r}")


def jitter_matrices(num_images, seed, epoch, image_size, jitter):
    """Random similarities [N, 2, 3] of `epoch` (crop pixel → jittered crop pixel), per image.

    Image i of the epoch is scaled by 1 + u₁·j, rotated by u₂·j·90° about the crop centre and
    shifted by (u₃·j·W, u₄·j·H), each u uniform in [−1, 1] (j = `jitter` in [0, 0.5); 0: the
    identity). A pure function of (seed, epoch) like `epoch_order`, from a stream of its own,
    so the order and the flips do not depend on `jitter`. Row i belongs to image i.
    """
    check_jitter(jitter)
    height, width = image_size
    u = np.random.default_rng([int(seed), int(epoch), 1]).uniform(-1.0, 1.0, (num_images, 4))
    scale, angle = 1.0 + jitter * u[:, 0], jitter * u[:, 1] * (np.pi / 2)
    linear = scale[:, None, None] * np.stack(
        [np.stack([np.cos(angle), -np.sin(angle)], 1), np.stack([np.sin(angle), np.cos(angle)], 1)], 1
    )
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    shift = jitter * u[:, 2:] * np.array([width, height])
    translation = centre + shift - linear @ centre
    return np.concatenate([linear, translation[:, :, None]], axis=2)


def compose_affine(outer, inner):
    """[N, 2, 3] affine maps `outer ∘ inner` (apply `inner` first); either may be one [2, 3]."""
    outer, inner = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return outer[..., :2] @ inner + np.concatenate(
        [np.zeros(inner.shape[:-1] + (2,)), outer[..., 2:]], axis=-1
    )


def invert_affine(matrices):
    """Inverse affine maps [N, 2, 3] of invertible `matrices` [N, 2, 3]."""
    linear = np.linalg.inv(np.asarray(matrices, np.float64)[..., :2])
    return np.concatenate([linear, -linear @ np.asarray(matrices, np.float64)[..., 2:]], axis=-1)


def resolve_landmarks(index, landmarks):
    """Per-image (5, 2) landmarks for `index` from a {relative_path: points} dict or a file path.

    Every image must have landmarks; the missing ones are listed by name.
    """
    if not isinstance(landmarks, dict):
        from keras_sphereface.alignment.landmarks import read_landmarks_file

        landmarks = read_landmarks_file(os.fspath(landmarks))
    missing = [p for p in index.paths if p not in landmarks]
    if missing:
        raise UserInputError(
            f"Expected landmarks for every image under {index.root!r}. Received: none for "
            f"{len(missing)} of {len(index)} images, e.g. {missing[:5]}"
        )
    return np.stack([np.asarray(landmarks[p], dtype=np.float32).reshape(5, 2) for p in index.paths])


def alignment_matrices(points, image_size, paths=None):
    """Forward similarity transforms [N, 2, 3] (source pixel → crop pixel), as `cv2.warpAffine` takes.

    `alignment.warp.similarity_transform` (Umeyama) per image, ~45 µs each, computed once
    when a loader is made rather than once per image and epoch. `paths` (one per image)
    names the image in the error about degenerate landmarks.
    """
    from keras_sphereface.alignment.warp import similarity_transform

    matrices = []
    for i, p in enumerate(points):
        try:
            matrices.append(similarity_transform(p, image_size))
        except UserInputError as error:
            if paths is None:
                raise
            raise UserInputError(f"Landmarks of {paths[i]!r}: {error}") from None
    return np.stack(matrices).astype(np.float64)
