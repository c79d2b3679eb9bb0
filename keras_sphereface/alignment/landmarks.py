"""The landmarks file: detection runs once, training and evaluation align from it.

Format, one line per image, whitespace-separated:

    relative/path.jpg x1 y1 x2 y2 x3 y3 x4 y4 x5 y5

Points in the order of the template (left eye, right eye, nose tip, left mouth corner,
right mouth corner), in pixels of the original image. The path is everything before the
last 10 numbers (so a path may contain spaces). Lines starting with '#' are comments.
A `.gz` file is read and written compressed.
"""

import gzip
import os

import numpy as np

from keras_sphereface.atomic import atomic_path
from keras_sphereface.errors import UserInputError


def _open_text(path, mode):
    return gzip.open(path, mode + "t") if str(path).endswith(".gz") else open(path, mode)


def read_landmarks_file(path):
    """Return {relative_path: float32 array (5, 2)}; a malformed line is an error naming it."""
    if not os.path.isfile(path):
        raise UserInputError(f"Expected an existing landmarks file. Received: {path}")
    landmarks = {}
    with _open_text(path, "r") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            try:
                if len(fields) < 11:
                    raise ValueError
                values = np.array([float(v) for v in fields[-10:]], dtype=np.float32)
                if not np.all(np.isfinite(values)):
                    raise ValueError
            except ValueError:
                raise UserInputError(
                    f"{path}, line {number}: expected 'relative/path x1 y1 ... x5 y5' "
                    f"(a path and 10 finite numbers). Received: {line!r}"
                ) from None
            landmarks[" ".join(fields[:-10])] = values.reshape(5, 2)
    return landmarks


def write_landmarks_file(path, landmarks, header=None):
    """Write {relative_path: (5, 2)} atomically, sorted by path; `header` lines become comments."""
    with atomic_path(path) as tmp:
        with _open_text(tmp, "w") as f:
            for line in (header or "").splitlines():
                f.write(f"# {line}\n")
            for relpath in sorted(landmarks):
                points = np.asarray(landmarks[relpath], dtype=np.float64).reshape(10)
                f.write(relpath + " " + " ".join(f"{v:.2f}" for v in points) + "\n")
