"""Detection + alignment throughput (images/s) on LFW, against one-by-one MTCNN in the same run.

Three measurements over the same first --num-images LFW deep-funneled images:

(a) baseline: read, MTCNN on one image at a time (the `mtcnn` package's usual call), pick
    the central face, warp to 112x96; one process, one TensorFlow thread;
(b) the same with `FaceDetector`'s same-shape batching (16 images per MTCNN call);
(c) the `align` command's engine, `align_folder` with --workers processes (default all
    cores), end to end: process start-up, reading, detection, warping, atomic JPEG writes
    and the CSV, on a temporary tree of links to the images.

(a) and (b) also report CPU seconds per image (stable when other jobs share the machine).

    python bench/align.py                 # 500 images
    python bench/align.py --smoke         # 16 images, seconds
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
    parser.add_argument("--lfw-dir", default=os.environ.get("LFW_DIR", str(REPO.parent / "shared/data/lfw")))
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--smoke", action="store_true", help="16 images")
    args = parser.parse_args()
    if args.smoke:
        args.num_images = 16
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


def time_align_folder(root, paths, workers):
    from keras_sphereface.alignment import align_folder

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        for path in paths:
            link = os.path.join(src, os.path.relpath(path, root))
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(path, link)
        wall = time.perf_counter()
        summary = align_folder(src, os.path.join(tmp, "dst"), workers=workers)
        return time.perf_counter() - wall, summary


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
    wall, summary = time_align_folder(root, paths, args.workers)
    print(f"(c) align_folder, {args.workers} workers, end to end: {n / wall:7.1f} img/s "
          f"(ok {summary['ok']}, fallback {summary['fallback']}, unreadable "
          f"{summary['unreadable']})   x{base_wall / wall:.2f} wall vs (a)")


if __name__ == "__main__":
    main()
