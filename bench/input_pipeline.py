"""Input pipeline throughput, images/s per CPU core, against plain tf.data in the same run.

(a) aligned 112x96 JPEG crops: decode, flip, batch (target >= 6,000 img/s per core);
(b) aligning on the fly from a landmarks file: decode the 250x250 LFW original, warp, flip,
    batch (target >= 1,500 img/s per core);
each for `make_dataset` (tf.data) and `FaceDataset` (PyDataset, OpenCV, threads),
beside a baseline measured in the same run: plain tf.data (read_file, decode_jpeg with the
default DCT, per-image random flip, batch, prefetch). Also the cost of `validate_images`.

The input is built here from LFW in a temporary folder: the first --num-images images, with
the shipped landmarks file under keras_sphereface/resources/ when there is one, otherwise a
fixed centred-face guess (LFW deep-funneled faces sit in the middle of the 250x250 frame),
and their aligned crops written as JPEG (quality 95).

    python bench/input_pipeline.py --cores 1         # pinned to one core
    python bench/input_pipeline.py --smoke           # tiny, seconds
"""

import argparse
import glob
import os
import pathlib
import resource
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGETS = {"a": 6000.0, "b": 1500.0}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw-dir", default=os.environ.get("LFW_DIR", str(REPO.parent / "shared/data/lfw")))
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cores", type=int, default=1, help="pin to the first N CPUs; figures are per core")
    parser.add_argument("--epochs", type=int, default=8, help="passes timed per loader (after one warm-up)")
    parser.add_argument("--smoke", action="store_true", help="64 images, batch 16, 1 timed pass")
    args = parser.parse_args()
    if args.smoke:
        args.num_images, args.batch_size, args.epochs = 64, 16, 1
    return args


def centred_landmarks(height=250, width=250):
    """A fixed 5-point guess for a centred, upright face: the template scaled 1.35x about the centre."""
    from keras_sphereface.alignment.warp import template_for

    template = template_for((112, 96))
    return (template - [48.0, 64.0]) * 1.35 + [width / 2.0, height / 2.0 + 8.0]


def build_input(args, workdir):
    """(originals index, landmarks dict, aligned-crops index, where the landmarks came from)."""
    import cv2

    from keras_sphereface.alignment import align_face, lfw_landmarks_path, read_landmarks_file
    from keras_sphereface.data import ImageIndex

    root = os.path.join(args.lfw_dir, "lfw-deepfunneled")
    shipped = lfw_landmarks_path()
    if os.path.isfile(shipped):
        landmarks, source = read_landmarks_file(shipped), os.path.relpath(shipped, REPO)
        paths = sorted(p for p in landmarks if os.path.isfile(os.path.join(root, p)))[: args.num_images]
    else:
        files = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[: args.num_images]
        paths = [os.path.relpath(f, root) for f in files]
        landmarks = {p: centred_landmarks() for p in paths}
        source = "centred-face guess"
    names = sorted({p.split("/")[0] for p in paths})
    label_of = {n: i for i, n in enumerate(names)}
    labels = [label_of[p.split("/")[0]] for p in paths]
    originals = ImageIndex(root, paths, labels, names)
    crops_root = os.path.join(workdir, "aligned")
    for path in paths:
        image = cv2.imread(os.path.join(root, path), cv2.IMREAD_COLOR)
        out = os.path.join(crops_root, path)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cv2.imwrite(out, align_face(image, landmarks[path], (112, 96)), [cv2.IMWRITE_JPEG_QUALITY, 95])
    crops = ImageIndex(crops_root, paths, labels, names)
    return originals, {p: landmarks[p] for p in paths}, crops, source


def plain_tf_data(index, batch_size):
    """The baseline: what a first tf.data pipeline looks like."""
    import tensorflow as tf

    def load(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.random_flip_left_right(image), label

    return (
        tf.data.Dataset.from_tensor_slices((index.absolute_paths(), index.labels))
        .shuffle(len(index))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .repeat()
    )


def cpu_seconds():
    """CPU time of this process (all threads) and of its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_batches(iterator, num_batches):
    """(images/s wall-clock, images per CPU-second) over `num_batches`, after one warm-up batch."""
    next(iterator)
    wall, cpu, images = time.perf_counter(), cpu_seconds(), 0
    for _ in range(num_batches):
        images += len(next(iterator)[1])
    return images / (time.perf_counter() - wall), images / (cpu_seconds() - cpu)


def main():
    args = parse_args()
    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cpus)  # before TensorFlow starts its thread pools
    import tensorflow as tf

    from keras_sphereface.data import FaceDataset, make_dataset, steps_per_epoch, validate_images

    cores = len(cpus)
    steps = steps_per_epoch(args.num_images, args.batch_size)
    timed = steps * args.epochs
    with tempfile.TemporaryDirectory(prefix="bench_input_") as workdir:
        originals, landmarks, crops, source = build_input(args, workdir)
        print(f"# {len(crops)} LFW images, landmarks: {source}; batch {args.batch_size}; "
              f"pinned to CPUs {cpus}; tensorflow {tf.__version__}")

        print(f"{'':<50} {'img/s per CPU-second':>21} {'wall img/s per core':>20}")

        def report(case, name, rates, baseline=None):
            wall, cpu = rates[0] / cores, rates[1]
            ratio = "" if baseline is None else f"{cpu / baseline[1]:5.2f}x baseline"
            print(f"({case}) {name:<46} {cpu:8.0f} {ratio:<16} {cpu / TARGETS[case]:5.2f}x target  "
                  f"{wall:8.0f} {'' if baseline is None else f'{wall * cores / baseline[0]:5.2f}x baseline'}",
                  flush=True)

        for case, index, marks in (("a", crops, None), ("b", originals, landmarks)):
            base = time_batches(iter(plain_tf_data(index, args.batch_size)), timed)
            report(case, "baseline: plain tf.data decode+flip" + (" (no warp)" if marks else ""), base)
            for cache in (False, True):
                dataset = make_dataset(index, args.batch_size, landmarks=marks, cache=cache)
                rates = time_batches(iter(dataset), timed)
                report(case, f"make_dataset (tf.data){' cache=True' if cache else ''}", rates, base)
            dataset = FaceDataset(index, args.batch_size, landmarks=marks, workers=cores, epochs=args.epochs + 1)
            report(case, f"FaceDataset (PyDataset, {cores} threads)", time_batches(iter(dataset), timed), base)

        for decoder in ("tensorflow", "opencv"):
            start = cpu_seconds()
            validate_images(originals, decoder=decoder)
            per_image = (cpu_seconds() - start) / len(originals)
            print(f"validate_images(decoder={decoder!r}) on 250x250 JPEGs: {per_image * 1e6:5.0f} CPU-us/image")


if __name__ == "__main__":
    main()
