"""Detection + alignment throughput (images/s) on LFW, against one-by-one MTCNN in the same run.

Four measurements over the same first --num-images LFW deep-funneled images:

(a) baseline: read, MTCNN on one image at a time (the `mtcnn` package's usual call), pick
    the central face, warp to 112x96; one process, one TensorFlow thread;
(b) the same with `FaceDetector`'s same-shape batching (16 images per MTCNN call);
(c) the `align` command's engine, `align_folder`, in this process (1 worker), end to end:
    reading, detection, warping, atomic JPEG writes and the CSV, on a temporary tree of
    links to the images (MTCNN loads again: a new detector);
(d) the same with --workers processes (default all cores), spawn and TensorFlow import of
    each worker included.

(a) and (b) also report CPU milliseconds per image (stable when other jobs share the machine).

    python bench/align.py                 # 500 images
    python bench/align.py --smoke         # 40 images, under a minute
"""

import argparse
import glob
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_lfw = os.environ.get("LFW_DIR", str(REPO.parent / "shared/data/lfw"))
    parser.add_argument("--lfw-dir", default=default_lfw)
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--smoke", action="store_true", help="40 images (3 chunks of work)")
    args = parser.parse_args()
    if args.smoke:
        args.num_images = 40
    return args


def time_in_process(paths, batch_size):
    """(wall s, CPU s, faces found) to read, detect (batches of `batch_size`) and warp `paths`."""
    import tensorflow as tf

    from keras_sphereface.alignment import FaceDetector, align_face, fallback_landmarks, read_image
    from keras_sphereface.alignment.detect import central_face

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    detector = FaceDetector(batch_size=batch_size)
    detector.detect_many([read_image(paths[0])[0]] * 2)  # load the networks, trace once
    wall, cpu, found = time.perf_counter(), time.process_time(), 0
    for start in range(0, len(paths), batch_size):
        images = [read_image(path)[0] for path in paths[start : start + batch_size]]
        for image, faces in zip(images, detector.detect_many(images)):
            face = central_face(faces, image.shape)
            found += face is not None
            align_face(image, fallback_landmarks(image.shape) if face is None else face.landmarks)
    return time.perf_counter() - wall, time.process_time() - cpu, found


class _Clock:
    """A progress hook for align_folder that notes when the first chunk of crops is done."""

    first = None

    def __init__(self, total):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, count):
        if _Clock.first is None:
            _Clock.first = (time.perf_counter(), count)


def time_align_folder(root, paths, workers):
    """(wall s, start-up s until the first chunk is written, img/s after it, summary)."""
    from keras_sphereface.alignment import align_folder

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        for path in paths:
            link = os.path.join(src, os.path.relpath(path, root))
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(path, link)
        _Clock.first = None
        start = time.perf_counter()
        summary = align_folder(src, os.path.join(tmp, "dst"), workers=workers, progress=_Clock)
        end = time.perf_counter()
        first, count = _Clock.first
        steady = (len(paths) - count) / (end - first) if count < len(paths) else float("nan")
        return end - start, first - start, steady, summary


def main():
    args = parse_args()
    root = os.path.join(args.lfw_dir, "lfw-deepfunneled")
    paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[: args.num_images]
    if not paths:
        sys.exit(f"No LFW images under {root}: pass --lfw-dir or set LFW_DIR")
    n = len(paths)
    print(f"{n} LFW images, {os.cpu_count()} CPU cores")

    base_wall, base_cpu, base_found = time_in_process(paths, batch_size=1)
    print(f"(a) one image per MTCNN call, 1 process: {n / base_wall:7.1f} img/s, "
          f"{1000 * base_cpu / n:6.1f} CPU ms/img, faces {base_found}/{n}")
    wall, cpu, found = time_in_process(paths, batch_size=16)
    print(f"(b) batches of 16, 1 process:            {n / wall:7.1f} img/s, "
          f"{1000 * cpu / n:6.1f} CPU ms/img, faces {found}/{n}   "
          f"x{base_wall / wall:.2f} wall, x{base_cpu / cpu:.2f} CPU vs (a)")
    for label, workers in (("(c)", 1), ("(d)", args.workers)):
        wall, startup, steady, summary = time_align_folder(root, paths, workers)
        print(f"{label} align_folder, {workers} worker(s), end to end: {n / wall:7.1f} img/s "
              f"(x{base_wall / wall:.2f} wall vs (a); first chunk after {startup:.1f} s, "
              f"then {steady:.1f} img/s; ok {summary['ok']}, fallback {summary['fallback']}, "
              f"unreadable {summary['unreadable']})")

if __name__ == "__main__":
    main()
