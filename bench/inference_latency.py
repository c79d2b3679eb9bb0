"""CPU inference latency and file size of one backbone in every export format, in one run.

Formats: the Keras model (`predict_on_batch`, the baseline), the exported SavedModel
(`serving_default` signature, TensorFlow runtime) and TFLite float32 / float16 / dynamic-range
/ int8 (LiteRT interpreter, XNNPACK). For batch sizes 1 and 32: the median wall-clock time of
one call, images/s, and the CPU time (all threads of this process, stable when other jobs
share the machine), each with its ratio to Keras measured in the same run. Sizes: the .keras
file, the SavedModel directory, the .tflite files. Parity: min cosine to the Keras embedding on the
timed images (real LFW faces aligned to the template when LFW is found, else random pixels).

    python bench/inference_latency.py            # sphere20, full width (22.7 M parameters)
    python bench/inference_latency.py --smoke    # sphere4 at 1/8 width, few repeats: seconds
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

FORMATS = ("keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic",
           "tflite_int8")
QUANTIZATION = {"tflite_float32": "none", "tflite_float16": "float16",
                "tflite_dynamic": "dynamic", "tflite_int8": "int8"}


def size_on_disk(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def time_calls(embed, images, repeats):
    """Median wall and CPU seconds of `embed(images)` after two warm-up calls."""
    for _ in range(2):
        embed(images)
    wall, cpu = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        embed(images)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return statistics.median(wall), statistics.median(cpu)


def benchmark_images(count, input_size, lfw_dir=None, seed=0):
    """(uint8 faces, description): aligned LFW faces if LFW is found, else random pixels."""
    from keras_sphereface.errors import UserInputError
    from keras_sphereface.evaluation.lfw import resolve_lfw_dir
    from keras_sphereface.export.images import lfw_faces

    try:
        return lfw_faces(resolve_lfw_dir(lfw_dir), input_size, count=count), "LFW faces"
    except UserInputError:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (count, *input_size, 3), dtype=np.uint8), "random pixels"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few repeats")
    parser.add_argument("--backbone", default="sphere20")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per batch size")
    parser.add_argument("--calibration", type=int, default=64, help="int8 calibration faces")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--lfw-dir", help="LFW folder for real faces (default: $LFW_DIR)")
    args = parser.parse_args()
    if args.smoke:
        args.backbone, args.width_multiplier = "sphere4", 0.125
        args.repeats, args.calibration = 3, 8

    import keras
    import tensorflow as tf

    from keras_sphereface.backbones import get_backbone
    from keras_sphereface.export import (
        LiteRTEmbedder,
        export_saved_model,
        export_tflite,
        load_saved_model_embedder,
    )
    from keras_sphereface.export.parity import embedding_parity
    from keras_sphereface.runtime import device_description

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    keras.utils.set_random_seed(0)
    model = get_backbone(args.backbone, width_multiplier=args.width_multiplier)
    input_size = tuple(model.input_shape[1:3])
    images, source = benchmark_images(
        max(batch_sizes) + args.calibration, input_size, args.lfw_dir
    )
    timed, calibration = images[: max(batch_sizes)], images[max(batch_sizes) :]
    print(f"{args.backbone} x{args.width_multiplier}: {model.count_params():,} parameters, "
          f"input {input_size[0]}x{input_size[1]}; {args.threads} threads, {source}; "
          f"TF {tf.__version__}, Keras {keras.__version__}; {device_description()}")

    with tempfile.TemporaryDirectory(prefix="inference_latency_") as folder:
        paths, embedders, export_seconds = {}, {}, {}
        paths["keras"] = os.path.join(folder, "model.keras")
        model.save(paths["keras"])
        embedders["keras"] = lambda x: model.predict_on_batch(x.astype(np.float32))
        start = time.perf_counter()
        paths["saved_model"] = export_saved_model(model, os.path.join(folder, "saved_model"))
        export_seconds["saved_model"] = time.perf_counter() - start
        embedders["saved_model"] = load_saved_model_embedder(paths["saved_model"], batch_size=1024)
        for name, quantization in QUANTIZATION.items():
            start = time.perf_counter()
            paths[name] = export_tflite(model, os.path.join(folder, f"{name}.tflite"), quantization,
                                        representative_images=calibration)
            export_seconds[name] = time.perf_counter() - start
            embedders[name] = LiteRTEmbedder(paths[name], num_threads=args.threads)

        reference = embedders["keras"](timed)
        rows, baseline = [], {}
        for name in FORMATS:
            parity = embedding_parity(reference, embedders[name](timed))
            for batch in batch_sizes:
                repeats = args.repeats if batch > 1 else 3 * args.repeats
                wall, cpu = time_calls(embedders[name], timed[:batch], repeats)
                base_wall, base_cpu = baseline.setdefault(batch, (wall, cpu))
                rows.append((name, batch, wall, cpu, wall / base_wall, cpu / base_cpu,
                             parity["min_cosine"]))
            print(f"  measured {name}", file=sys.stderr, flush=True)
        sizes = {name: size_on_disk(path) for name, path in paths.items()}

    print(f"\n| format | batch | wall ms | images/s | wall vs Keras | CPU ms | CPU vs Keras | "
          f"size MB | min cosine vs Keras | export s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, batch, wall, cpu, wall_ratio, cpu_ratio, cosine in rows:
        print(f"| {name} | {batch} | {1000 * wall:.1f} | {batch / wall:.1f} | {wall_ratio:.2f}x | "
              f"{1000 * cpu:.1f} | {cpu_ratio:.2f}x | {sizes[name] / 1e6:.1f} | {cosine:.6f} | "
              f"{export_seconds.get(name, 0):.1f} |")


if __name__ == "__main__":
    main()
