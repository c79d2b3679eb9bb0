"""Align a whole identity-folder tree: crops in the same layout, a CSV report, a landmarks file.

`align_folder(src, dst)` walks `src` (every file, hidden ones excepted), detects the central
face's 5 landmarks with MTCNN (or takes them from a landmarks file), warps each image onto
the template and writes the crop to the same relative path under `dst`. Every file gets one
CSV row (path, box, 5 landmarks, detector confidence, status, reason), with status:

- `ok`: a face was found (or the landmarks file had the image); the crop is written;
- `fallback`: no face found; the crop uses the mean LFW landmarks at the image centre
  (`detect.fallback_landmarks`) and is written too: reported, never dropped;
- `unreadable`: the file cannot be decoded (empty, truncated, corrupt, not an image); no crop.

The reason column says why, and notes conversions (grayscale, alpha, 16-bit, upscaling).

Resumable: each row is appended and flushed as soon as its crop is in place (crops are written
atomically), so after an interruption a new run skips every image with a row and a crop, drops
a torn last row, and removes temporary files a killed worker left behind. At the end the
landmarks file (`keras_sphereface.alignment.landmarks` format) is rebuilt from the CSV.
Work is spread over processes (spawned, one MTCNN and one TensorFlow thread each).
"""

import contextlib
import csv
import datetime
import gzip
import importlib.metadata
import json
import multiprocessing
import os

import cv2
import numpy as np

from keras_sphereface.alignment import detect
from keras_sphereface.alignment.landmarks import read_landmarks_file, write_landmarks_file
from keras_sphereface.alignment.warp import align_face, parse_size
from keras_sphereface.atomic import atomic_path, remove_temporaries
from keras_sphereface.errors import UserInputError

STATUSES = ("ok", "fallback", "unreadable")
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
CSV_COLUMNS = (
    ["path", "box_x1", "box_y1", "box_x2", "box_y2"]
    + [f"{name}_{axis}" for name in POINT_NAMES for axis in "xy"]
    + ["confidence", "status", "reason"]
)
CSV_NAME, LANDMARKS_NAME, SETTINGS_NAME = "alignment.csv", "landmarks.txt", "alignment.json"
WRITABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
JPEG_QUALITY = 95
FALLBACK_MARK = "fallback: "  # header comment marking a fallback entry of a landmarks file
# Images per worker task: MTCNN runs same-shape images as one batch (see FaceDetector)
CHUNK = 16
IMAGES_PER_DEFAULT_WORKER = 500


class AlignmentRecord:
    """One CSV row: relative `path`, `status`, `reason`, and `box`, `landmarks`, `confidence`
    (None where not known: no detection ran, or the file is unreadable)."""

    def __init__(self, path, status, reason="", box=None, landmarks=None, confidence=None):
        self.path, self.status, self.reason = path, status, reason
        self.box = None if box is None else np.asarray(box, np.float32).reshape(4)
        if landmarks is not None:
            landmarks = np.asarray(landmarks, np.float32).reshape(5, 2)
        self.landmarks = landmarks
        self.confidence = confidence

    def to_row(self):
        box = [""] * 4 if self.box is None else [f"{v:.2f}" for v in self.box]
        points = [""] * 10
        if self.landmarks is not None:
            points = [f"{v:.2f}" for v in self.landmarks.ravel()]
        confidence = "" if self.confidence is None else f"{self.confidence:.4f}"
        return [self.path, *box, *points, confidence, self.status, self.reason]

    @classmethod
    def from_row(cls, row):
        """Parse a CSV row; raise ValueError if it is malformed (e.g. torn by a kill)."""
        if len(row) != len(CSV_COLUMNS) or row[-2] not in STATUSES:
            raise ValueError(f"malformed row: {row}")

        def numbers(fields):
            return None if all(v == "" for v in fields) else [float(v) for v in fields]

        confidence = numbers(row[15:16])
        return cls(
            row[0], row[-2], row[-1], numbers(row[1:5]), numbers(row[5:15]),
            None if confidence is None else confidence[0],
        )


def list_files(root):
    """Relative POSIX paths of every non-hidden file under `root`, sorted.

    Symbolic links to folders are followed (a linked dataset), each real folder once.
    """
    paths, seen = [], set()
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(directory))
        subdirectories[:] = sorted(
            d for d in subdirectories
            if not d.startswith(".") and os.path.realpath(os.path.join(directory, d)) not in seen
        )
        relative = os.path.relpath(directory, root)
        for name in sorted(files):
            if not name.startswith("."):
                paths.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
    return paths


def output_path(relpath):
    """The crop's relative path: the source's, plus '.png' if OpenCV cannot write its extension."""
    if os.path.splitext(relpath)[1].lower() in WRITABLE_EXTENSIONS:
        return relpath
    return relpath + ".png"


def align_images(paths, relpaths, size=(112, 96), detector=None, landmarks_table=None):
    """Align image files; one (AlignmentRecord, crop or None) each. Never raises for bad input.

    Landmarks come from `landmarks_table` ({relpath: (5, 2)}, no detection) when given, else
    from `detector` (a `FaceDetector`: the face nearest the centre); failing both, from
    `detect.fallback_landmarks` (status `fallback`). Unreadable files get no crop.
    """
    if detector is None and landmarks_table is None:
        raise ValueError("align_images needs a `detector` or a `landmarks_table`")
    results, readable = [None] * len(paths), []
    for index, (path, relpath) in enumerate(zip(paths, relpaths)):
        try:
            image, notes = detect.read_image(path)
        except detect.UnreadableImage as error:
            results[index] = (AlignmentRecord(relpath, "unreadable", str(error)), None)
            continue
        if image.shape[0] < size[0] or image.shape[1] < size[1]:
            notes.append(f"image {image.shape[0]}x{image.shape[1]} smaller than the "
                         f"{size[0]}x{size[1]} crop")
        readable.append((index, relpath, image, notes))
    if landmarks_table is None:
        images = [image for _, _, image, _ in readable]
        try:
            all_faces = detector.detect_many(images)
        except Exception:  # one odd image must not stop a 13k-image run: retry one by one
            all_faces = [_detect_one(detector, image, notes) for _, _, image, notes in readable]
    for position, (index, relpath, image, notes) in enumerate(readable):
        if landmarks_table is not None:
            found = landmarks_table.get(relpath)
            results[index] = _warp(relpath, image, notes, size, found, "not in the landmarks file")
            continue
        faces = all_faces[position]
        if len(faces) > 1:
            notes.append(f"{len(faces)} faces found, kept the one nearest the centre")
        face = detect.central_face(faces, image.shape)
        results[index] = _warp(relpath, image, notes, size, face, "no face found")
    return results


def align_image(path, relpath, size=(112, 96), detector=None, landmarks_table=None):
    """`align_images` for one file: (AlignmentRecord, crop or None)."""
    return align_images([path], [relpath], size, detector, landmarks_table)[0]


def _detect_one(detector, image, notes):
    try:
        return detector(image)
    except Exception as error:
        notes.append(f"detector failed: {type(error).__name__}: {error}")
        return []


def _warp(relpath, image, notes, size, found, missing_reason):
    """Warp with `found` (a `Face`, (5, 2) landmarks or None); the fallback when None/degenerate."""
    box = confidence = None
    landmarks, fallback_reason, crop = found, missing_reason if found is None else None, None
    if isinstance(found, detect.Face):
        landmarks, box, confidence = found.landmarks, found.box, found.confidence
    if landmarks is not None:
        try:
            crop = align_face(image, landmarks, size)
        except UserInputError as error:  # degenerate landmarks in a landmarks file
            fallback_reason = str(error)
    if fallback_reason is not None:
        landmarks = detect.fallback_landmarks(image.shape)
        notes.insert(0, f"{fallback_reason}: mean LFW landmarks at the image centre")
        crop = align_face(image, landmarks, size)
    status = "ok" if fallback_reason is None else "fallback"
    return AlignmentRecord(relpath, status, "; ".join(notes), box, landmarks, confidence), crop


def write_image(path, image_rgb):
    """Write an RGB uint8 image atomically (format from the extension, JPEG quality 95)."""
    jpeg = os.path.splitext(path)[1].lower() in (".jpg", ".jpeg")
    with atomic_path(path) as tmp:
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else []
        if not cv2.imwrite(tmp, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"OpenCV could not write {path}")


class _Worker:
    """Aligns a chunk of relative paths and writes their crops; one per process."""

    def __init__(self, src, dst, size, landmarks_table, threads):
        self.src, self.dst, self.size, self.landmarks_table = src, dst, size, landmarks_table
        self.detector = None
        if landmarks_table is None:
            self.detector = detect.FaceDetector(threads=threads)

    def __call__(self, relpaths):
        results = align_images(
            [os.path.join(self.src, relpath) for relpath in relpaths], relpaths, self.size,
            self.detector, self.landmarks_table,
        )
        for record, crop in results:
            if crop is not None:
                write_image(os.path.join(self.dst, output_path(record.path)), crop)
        return [record for record, _ in results]


_worker = None


def _init_worker(src, dst, size, landmarks):
    global _worker
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for variable in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[variable] = "1"
    cv2.setNumThreads(1)
    _worker = _Worker(src, dst, size, landmarks, threads=1)


def _run_worker(relpaths):
    return _worker(relpaths)


class _NoProgress:
    def __init__(self, total):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, count):
        pass


def read_alignment_csv(path):
    """The well-formed rows of an alignment CSV as AlignmentRecords (a torn row is skipped)."""
    records = []
    if not os.path.isfile(path):
        return records
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row == CSV_COLUMNS:
                continue
            try:
                records.append(AlignmentRecord.from_row(row))
            except ValueError:
                continue
    return records


def _check_settings(dst, settings):
    """Refuse to resume into `dst` with other settings; record them for the next run."""
    path = os.path.join(dst, SETTINGS_NAME)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except ValueError as error:
            raise UserInputError(
                f"{path}: expected the settings an earlier align run wrote there (JSON). "
                f"Received: a damaged file ({error}); delete it to align this folder again"
            ) from None
        if previous != settings:
            raise UserInputError(
                f"{path}: this output folder was aligned with other settings; resume with the "
                f"same ones or choose another output folder. Expected: {previous}. "
                f"Received: {settings}"
            )
        return
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(settings, f, indent=2)


def read_fallback_paths(landmarks_file):
    """Paths a landmarks file written by `align_folder` marks as fallbacks (no face found)."""
    marked = set()
    with _open_text(landmarks_file) as f:
        for line in f:
            if not line.startswith("#"):
                break
            if line[1:].strip().startswith(FALLBACK_MARK):
                marked.add(line[1:].strip()[len(FALLBACK_MARK):])
    return marked


def _open_text(path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def _landmarks_header(records, settings, command):
    fallbacks = sorted(r.path for r in records if r.status == "fallback")
    lines = [
        "5-point face landmarks: relative/path x1 y1 ... x5 y5 (left eye, right eye, nose, "
        "left and right mouth corners; pixels of the original image).",
        f"Produced by keras_sphereface.alignment.align_folder on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} (UTC)"
        + (
            f" with mtcnn {importlib.metadata.version('mtcnn')}: the face nearest the centre."
            if settings["landmarks"] == "mtcnn"
            else f" from the landmarks in {settings['landmarks']}."
        ),
    ]
    if command:
        lines.append(f"Command: {command}")
    lines.append(
        f"{len(fallbacks)} image(s) without a detected face carry the fallback landmarks "
        f"(the mean LFW landmarks at the image centre):"
    )
    lines += [f"{FALLBACK_MARK}{path}" for path in fallbacks]
    return "\n".join(lines)


def align_folder(
    src,
    dst,
    size=(112, 96),
    workers=None,
    csv_path=None,
    landmarks_out=None,
    from_landmarks=None,
    progress=None,
    command=None,
):
    """Align every image under `src` into `dst` (same layout); resumable. See the module doc.

    Args:
        src: identity-folder tree (`NAME/image.jpg`, any depth).
        dst: output folder for the crops (must not lie inside `src`).
        size: crop (height, width), (112, 96) or (112, 112), or a string "112x96".
        workers: processes; 1 runs in this process. Default: all cores, but no more than
            one per 500 images (each worker takes 5-20 s to start TensorFlow and MTCNN).
        csv_path: the per-image report (default `dst/alignment.csv`).
        landmarks_out: the landmarks file written at the end (default `dst/landmarks.txt`;
            `.gz` compresses it).
        from_landmarks: align from this landmarks file instead of detecting.
        progress: `progress(total)` -> context manager with `.update(n)`, e.g.
            `lambda total: click.progressbar(length=total)`.
        command: the command line, recorded in the landmarks file's header.

    Returns:
        dict: counts per status over all images, plus `resumed` (images done by an earlier
        run and skipped) and the paths of the CSV and the landmarks file.
    """
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    size = parse_size(size) if isinstance(size, str) else tuple(size)
    parse_size(f"{size[0]}x{size[1]}")
    if not os.path.isdir(src):
        raise UserInputError(f"Expected an existing folder of images to align. Received: {src}")
    if os.path.commonpath([src, dst]) == src:
        raise UserInputError(f"Expected an output folder outside the source {src}. Received: {dst}")
    files = list_files(src)
    if not files:
        raise UserInputError(f"Expected image files under the source folder. Received: {src}, "
                             f"which holds none")
    csv_path = csv_path or os.path.join(dst, CSV_NAME)
    landmarks_out = landmarks_out or os.path.join(dst, LANDMARKS_NAME)
    landmarks_table, marked_fallbacks = None, set()
    if from_landmarks is not None:
        landmarks_table = read_landmarks_file(from_landmarks)
        marked_fallbacks = read_fallback_paths(from_landmarks)
    settings = {
        "source": src,
        "size": f"{size[0]}x{size[1]}",
        "landmarks": "mtcnn" if from_landmarks is None else os.path.abspath(from_landmarks),
    }
    os.makedirs(dst, exist_ok=True)
    _check_settings(dst, settings)
    remove_temporaries(dst)

    done = {
        r.path: r
        for r in read_alignment_csv(csv_path)
        if r.status == "unreadable" or os.path.isfile(os.path.join(dst, output_path(r.path)))
    }
    done = {path: done[path] for path in files if path in done}
    todo = [path for path in files if path not in done]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(done[path].to_row() for path in files if path in done)

    records = list(done.values())
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    if workers is None:  # a worker's start-up (spawn, TensorFlow, MTCNN) pays off after ~500 images
        workers = min(os.cpu_count() or 1, len(todo) // IMAGES_PER_DEFAULT_WORKER)
    workers = max(1, min(workers, len(chunks)))
    progress = progress or _NoProgress
    with open(csv_path, "a", newline="") as f, progress(len(todo)) as bar:
        writer = csv.writer(f)
        initargs = (src, dst, size, landmarks_table)
        if workers == 1:
            chunks = map(_Worker(*initargs, threads=None), chunks)
            pool = contextlib.nullcontext()
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, initargs)
            chunks = pool.imap_unordered(_run_worker, chunks)
        with pool:
            for chunk in chunks:
                for record in chunk:
                    if record.path in marked_fallbacks and record.status == "ok":
                        record.status = "fallback"
                        record.reason = "; ".join(filter(None, [
                            "no face found when the landmarks file was made: its fallback "
                            "landmarks", record.reason]))
                    writer.writerow(record.to_row())
                records.extend(chunk)
                f.flush()
                bar.update(len(chunk))

    write_landmarks_file(
        landmarks_out,
        {r.path: r.landmarks for r in records if r.status != "unreadable"},
        header=_landmarks_header(records, settings, command),
    )
    counts = {status: sum(r.status == status for r in records) for status in STATUSES}
    return {**counts, "resumed": len(done), "csv": csv_path, "landmarks": landmarks_out}
