"""Training throughput of the project's sphere20 + MarginSoftmax on one accelerator, with the
PyTorch anchor and stock Keras measured in the same run.

ours: `keras_sphereface.training.compiled_training_model`, the very model `train` fits
(A-Softmax m=4 head over 10,575 classes, CoupledWeightDecaySGD with the paper's schedule,
sparse cross-entropy + accuracy, jit_compile "auto"), trained with `model.fit` on one
synthetic uint8 batch held on the device, so no input pipeline is timed. The warm-up steps
(tracing, XLA compile) run in a first `fit` call; the timed steps in a second, whose wall
time includes everything of a `fit` epoch but the data.
stock: what a Keras user writes: the same backbone and dtype policy, a plain
`keras.layers.Dense` softmax head, `keras.optimizers.SGD` (momentum 0.9), `model.fit` on
host NumPy arrays (as bench/anchor_gpu.py's Keras figures do).
anchor: `bench/anchor_gpu.py torch` (PyTorch sphere20 + CosFace head: fp32 eager, bf16
channels-last, bf16 channels-last + torch.compile) in a subprocess at the same batch,
classes and steps; ours is printed as a ratio to each of its lines.

MFU = img/s × training FLOP per image ÷ the device's dense bf16 peak (H100 / H200 SXM:
989 TFLOP/s), whatever the policy. Training FLOP per image = 3 × forward (one matmul
forward, two backward), forward = 2 × multiply-adds of every Conv2D, fc5 and the C-way
head; sphere20 at 112×96 with 10,575 classes: 10.5 GFLOP. Peak memory: the device
allocator's peak on a GPU under JAX (`memory_stats()["peak_bytes_in_use"]`), else the
process' peak RSS.

    python bench/train_throughput.py --smoke                  # tiny, CPU, seconds (CI)
    KERAS_BACKEND=jax python bench/train_throughput.py --anchor bench/anchor_gpu.py
    KERAS_BACKEND=jax python bench/train_throughput.py --configs --anchor bench/anchor_gpu.py

`--configs` runs sphere20 and sphere64 at batch 256 and sphere20 at 512, ours and stock,
each in its own process (its own peak memory; only one framework holds the GPU at a time),
and prints one table. The anchor is a sphere20, so sphere64 has no torch ratio.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

IMAGE_SHAPE = (112, 96, 3)
CONFIGS = (("sphere20", 256), ("sphere64", 256), ("sphere20", 512))
RESULT_PREFIX = "RESULT "
ANCHOR_COMPILE = "compile=True"  # the torch.compile line of the anchor

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of the device name;
# the first match wins, so the more specific names come first
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),  # also GH200
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sphere20")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=10575, help="CASIA-WebFace: 10,575")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--mixed-precision", choices=("none", "bfloat16", "float16"),
                        default="bfloat16", help="train's mixed_precision (none: float32)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps before them (tracing, XLA compile)")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="Model.compile's steps_per_execution")
    parser.add_argument("--head", choices=("ours", "stock"), default="ours",
                        help="ours: compiled_training_model; stock: Dense softmax, SGD, fit")
    parser.add_argument("--anchor", metavar="PATH",
                        help="run this copy of anchor_gpu.py (torch) and print ratios to it")
    parser.add_argument("--configs", action="store_true",
                        help="sphere20 and sphere64 at batch 256, sphere20 at 512; one table")
    parser.add_argument("--smoke", action="store_true",
                        help="width 0.125, 100 classes, batch 8, 2 steps: seconds on a CPU")
    parser.add_argument("--json", action="store_true",
                        help="also print the result as one 'RESULT {...}' line")
    args = parser.parse_args(argv)
    if args.smoke:
        args.width_multiplier, args.classes, args.batch_size = 0.125, 100, 8
        args.steps, args.warmup = 2, 1
    for name in ("batch_size", "classes", "steps", "warmup", "steps_per_execution"):
        if getattr(args, name) < 1:
            option = "--" + name.replace("_", "-")
            parser.error(f"Expected {option} >= 1. Received: {getattr(args, name)}")
    # whole executions only: the timer then starts and stops between two of them
    k = args.steps_per_execution
    args.steps, args.warmup = -(-args.steps // k) * k, -(-args.warmup // k) * k
    return args


def bf16_peak_tflops(device_kind):
    for name, tflops in BF16_PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops
    return None


def training_gflop_per_image(backbone, num_classes):
    """3 × forward FLOP: 2 × multiply-adds of each Conv2D (output pixels × k² × C_in × C_out),
    each Dense (fc5) and the (embedding × classes) head."""
    import keras

    forward = 2 * backbone.output.shape[-1] * num_classes
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kernel_height, kernel_width, channels_in, channels_out = layer.kernel.shape
            multiply_adds = kernel_height * kernel_width * channels_in * channels_out
            forward += 2 * height * width * multiply_adds
        elif isinstance(layer, keras.layers.Dense):
            forward += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return 3 * forward / 1e9


def device_and_peak_memory():
    """(device kind, peak memory in bytes, what the peak is) of the device Keras trains on."""
    import keras

    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform == "gpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return device.device_kind, stats["peak_bytes_in_use"], "GPU"
        return f"{device.platform} ({device.device_kind})", host_peak, "host RSS"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            kind = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            return kind, tf.config.experimental.get_memory_info("GPU:0")["peak"], "GPU"
    return "cpu", host_peak, "host RSS"


def device_batches(images, labels, steps):
    """`steps` copies of one ({"images", "labels"}, labels) batch, converted to tensors once:
    on the device under JAX (the JAX trainer's device_put is then a no-op), a cached
    tf.data element under TensorFlow."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        batch = ({"images": images, "labels": labels}, labels)
        return tf.data.Dataset.from_tensors(batch).repeat(steps)
    batch = ({"images": keras.ops.convert_to_tensor(images),
              "labels": keras.ops.convert_to_tensor(labels)},
             keras.ops.convert_to_tensor(labels))

    class OneBatch(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, index):
            return batch

    return OneBatch()


def measure(args):
    """Train `args.warmup` untimed and `args.steps` timed steps of the `args.head` model;
    returns the result dict."""
    import keras
    import numpy as np

    from keras_sphereface.backbones import get_backbone
    from keras_sphereface.training import (
        compiled_training_model, default_learning_rate, mixed_precision_policy,
    )

    mixed_precision = None if args.mixed_precision == "none" else args.mixed_precision
    keras.utils.set_random_seed(0)
    backbone = get_backbone(args.backbone, input_shape=IMAGE_SHAPE,
                            width_multiplier=args.width_multiplier,
                            dtype=mixed_precision_policy(mixed_precision))
    learning_rate = default_learning_rate(args.batch_size)
    rng = np.random.default_rng(0)
    if args.head == "ours":
        model = compiled_training_model(
            backbone, args.classes, args.warmup + args.steps, mode="sphereface",
            learning_rate=learning_rate, mixed_precision=mixed_precision,
            steps_per_execution=args.steps_per_execution,
        )
        images = rng.integers(0, 256, (args.batch_size, *IMAGE_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, args.classes, args.batch_size).astype(np.int32)

        def run(steps):
            return model.fit(device_batches(images, labels, steps), epochs=1, shuffle=False,
                             verbose=0)
    else:
        images_in = keras.Input(IMAGE_SHAPE, name="images")
        logits = keras.layers.Dense(args.classes, dtype="float32", name="softmax")(
            backbone(images_in))
        model = keras.Model(images_in, logits)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile="auto", steps_per_execution=args.steps_per_execution)
        count = args.batch_size * max(args.steps, args.warmup)
        images = rng.integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)
        labels = rng.integers(0, args.classes, count).astype(np.int32)

        def run(steps):
            count = args.batch_size * steps
            return model.fit(images[:count], labels[:count], batch_size=args.batch_size,
                             epochs=1, shuffle=False, verbose=0)

    run(args.warmup)  # fit returns after the last step's loss reached the host
    start = time.perf_counter()
    history = run(args.steps)
    seconds = time.perf_counter() - start
    steps_done = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if steps_done != args.warmup + args.steps and mixed_precision != "float16":
        raise RuntimeError(f"Expected {args.warmup + args.steps} optimizer steps, ran {steps_done}")
    device_kind, peak_bytes, peak_kind = device_and_peak_memory()
    gflop = training_gflop_per_image(backbone, args.classes)
    peak_tflops = None if peak_kind == "host RSS" else bf16_peak_tflops(device_kind)
    img_per_s = args.batch_size * args.steps / seconds
    return {
        "head": args.head,
        "backbone": args.backbone,
        "batch": args.batch_size,
        "classes": args.classes,
        "mixed_precision": args.mixed_precision,
        "steps_per_execution": args.steps_per_execution,
        "img_per_s": img_per_s,
        "ms_per_step": 1000 * seconds / args.steps,
        "final_loss": float(history.history["loss"][-1]),
        "gflop_per_img": gflop,
        "mfu": img_per_s * gflop / (peak_tflops * 1e3) if peak_tflops else None,
        "peak_tflops": peak_tflops,
        "peak_memory_gib": peak_bytes / 2**30,
        "peak_memory_kind": peak_kind,
        "device": device_kind,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
    }


def print_result(result):
    mfu = (f"MFU {100 * result['mfu']:.1f} % of {result['peak_tflops']:.0f} TFLOP/s bf16"
           if result["mfu"] is not None else "MFU n/a")
    print(f"{result['head']}: {result['img_per_s']:.1f} img/s "
          f"({result['ms_per_step']:.2f} ms/step), "
          f"peak memory {result['peak_memory_gib']:.2f} GiB ({result['peak_memory_kind']}), {mfu} "
          f"({result['gflop_per_img']:.2f} GFLOP/img), final loss {result['final_loss']:.3f}, "
          f"device {result['device']}", flush=True)


def run_anchor(path, batch, classes, steps, warmup):
    """The anchor's JSON lines (`python PATH torch`), one per PyTorch configuration."""
    env = dict(os.environ, BATCH=str(batch), CLASSES=str(classes), STEPS=str(steps),
               WARM=str(warmup))
    done = subprocess.run([sys.executable, path, "torch"], env=env, capture_output=True,
                          text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        lines = [{"config": f"anchor {path}", "error": f"exit {done.returncode}: "
                  f"{done.stderr.strip()[-300:]}"}]
    return lines


def print_anchor_ratios(ours, anchor_lines):
    for line in anchor_lines:
        if "error" in line:
            print(f"anchor {line['config']}: failed, {line['error']}")
        else:
            print(f"anchor {line['config']}: {line['img_per_s']:.1f} img/s, peak "
                  f"{line.get('peak_mem_gb', float('nan')):.2f} GiB -> ours "
                  f"{ours['img_per_s'] / line['img_per_s']:.2f}x")


def compile_anchor_rate(anchor_lines):
    rates = [line["img_per_s"] for line in anchor_lines
             if ANCHOR_COMPILE in line["config"] and "img_per_s" in line]
    return rates[0] if rates else None


def measure_in_child(args, backbone, batch, head):
    """`measure` in a fresh process (its own peak memory and dtype policies)."""
    command = [sys.executable, os.path.abspath(__file__), "--json", "--backbone", backbone,
               "--batch-size", str(batch), "--head", head, "--classes", str(args.classes),
               "--width-multiplier", str(args.width_multiplier),
               "--mixed-precision", args.mixed_precision, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--steps-per-execution",
               str(args.steps_per_execution)]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    print(f"{backbone} batch {batch} {head}: failed (exit {done.returncode})\n"
          f"{done.stderr.strip()[-1500:]}", file=sys.stderr)
    return None


def run_configs(args):
    # --smoke keeps the table's code path alive on a CPU: the same configurations at 1/32 batch
    configs = tuple((backbone, batch // 32 if args.smoke else batch) for backbone, batch in CONFIGS)
    anchors = {}
    if args.anchor:
        for batch in sorted({batch for _, batch in configs}):
            anchors[batch] = run_anchor(args.anchor, batch, args.classes, args.steps, args.warmup)
            for line in anchors[batch]:
                print(f"anchor batch {batch}: {json.dumps(line)}", flush=True)
    rows = []
    for backbone, batch in configs:
        ours = measure_in_child(args, backbone, batch, "ours")
        stock = measure_in_child(args, backbone, batch, "stock")
        for result in (ours, stock):
            if result:
                print_result(result)
        rows.append((backbone, batch, ours, stock))

    def rate(img_per_s):
        return f"{img_per_s:.1f}" if img_per_s else "n/a"

    def ratio(numerator, denominator):
        return f"{numerator / denominator:.2f}x" if numerator and denominator else "n/a"

    print(f"\nmixed precision {args.mixed_precision}, {args.classes} classes, "
          f"{args.steps} timed steps after {args.warmup}, steps_per_execution "
          f"{args.steps_per_execution}; ratios measured in this run")
    header = (f"{'config':<16} {'img/s':>9} {'x torch.compile':>15} {'x stock Keras':>13} "
              f"{'torch.compile':>13} {'stock img/s':>11} {'peak mem':>14} {'MFU':>6}  device")
    print(header)
    for backbone, batch, ours, stock in rows:
        if ours is None:
            print(f"{backbone + ' b' + str(batch):<16} failed")
            continue
        anchor_rate = (compile_anchor_rate(anchors.get(batch, []))
                       if backbone == "sphere20" else None)
        stock_rate = stock["img_per_s"] if stock else None
        memory_kind = "GPU" if ours["peak_memory_kind"] == "GPU" else "RSS"
        memory = f"{ours['peak_memory_gib']:.2f} GiB {memory_kind}"
        mfu = f"{100 * ours['mfu']:.1f}%" if ours["mfu"] is not None else "n/a"
        print(f"{backbone + ' b' + str(batch):<16} {ours['img_per_s']:>9.1f} "
              f"{ratio(ours['img_per_s'], anchor_rate):>15} "
              f"{ratio(ours['img_per_s'], stock_rate):>13} "
              f"{rate(anchor_rate):>13} {rate(stock_rate):>11} "
              f"{memory:>14} {mfu:>6}  {ours['device']}")


def main(argv=None):
    args = parse_args(argv)
    if args.configs:
        run_configs(args)
        return
    # the anchor first: this process has not touched the GPU yet (JAX preallocates memory)
    anchor_lines = (run_anchor(args.anchor, args.batch_size, args.classes, args.steps,
                               args.warmup) if args.anchor else [])
    import keras

    print(f"{args.backbone} ×{args.width_multiplier} + "
          f"{'MarginSoftmax (sphereface)' if args.head == 'ours' else 'Dense softmax (stock)'}, "
          f"{args.classes} classes, batch {args.batch_size}, mixed precision "
          f"{args.mixed_precision}, steps_per_execution {args.steps_per_execution}: "
          f"{args.steps} timed steps after {args.warmup}; keras {keras.__version__} on "
          f"{keras.backend.backend()}", flush=True)
    result = measure(args)
    print_result(result)
    print_anchor_ratios(result, anchor_lines)
    if args.json:
        print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
