"""Throughput and peak memory of a sphere20 training step as the identities grow.

For C in 10k, 100k, 1M, 2M identities and for the full softmax and Partial FC
(`sample_rate` 0.1, with `output_mode="loss"`, so no (batch, C) logit tensor is built):
images/s of `model.fit` steps (sphere20 + MarginSoftmax CosFace, SGD
with momentum 0.9, batch 256, 112×96 uint8 images, jit-compiled, Keras on the JAX backend)
and the peak memory, each configuration in a fresh process (the peak is per process, and a
configuration that runs out of memory does not take the others down). Peak memory is
`jax.Device.memory_stats()["peak_bytes_in_use"]` on a GPU (the largest over the devices used)
and the process's peak resident set size on the CPU. Beside it, `memory_per_device`'s estimate
of the class-dependent part (kernel, momentum, gradient, one logit buffer). Ratios are
against the first configuration (10k, full softmax) of the same run. Issue 9's target: 1M
identities at r = 0.1 reach ≥ 70 % of the 10k throughput on one H100.

    python bench/many_classes.py                  # the GPU run (all four sizes, both rates)
    python bench/many_classes.py --shard          # C sharded over all local devices
    python bench/many_classes.py --smoke          # CPU: sphere20 at width 1/8, batch 8, 1k ids
    python bench/many_classes.py --memory-table   # memory_per_device for 100k-10M ids, 1-64 devices
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+",
                        default=[10_000, 100_000, 1_000_000, 2_000_000])
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--width", type=float, default=1.0, help="backbone width multiplier")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing (compile)")
    parser.add_argument("--policy", default="float32", help="e.g. mixed_bfloat16")
    parser.add_argument("--shard", action="store_true",
                        help="margin_softmax_distribution over all local devices")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU-sized: width 1/8, batch 8, 1k classes, 2 steps")
    parser.add_argument("--memory-table", action="store_true",
                        help="print memory_per_device's table (batch 128 per device) and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "classes,sample_rate"
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first step compiles)")
    if args.smoke:
        args.classes, args.batch, args.width = [1000], 8, 0.125
        args.steps, args.warmup = 2, 1
    return args


def run_configuration(args, num_classes, sample_rate):
    """One configuration, in this process; returns the result as a dict."""
    import contextlib

    import keras
    import numpy as np

    from keras_sphereface.backbones import get_backbone
    from keras_sphereface.distribution import margin_softmax_distribution, memory_per_device
    from keras_sphereface.margins import precomputed_loss
    from keras_sphereface.models import build_training_model

    keras.mixed_precision.set_global_policy(args.policy)
    devices = keras.distribution.list_devices()
    devices = devices if args.shard else devices[:1]
    scope = (
        margin_softmax_distribution(num_classes, devices).scope()
        if args.shard else contextlib.nullcontext()
    )

    class StepTimer(keras.callbacks.Callback):
        """Wall time from the end of the warm-up steps to the end of training."""

        def on_train_batch_end(self, batch, logs=None):
            if batch == args.warmup - 1:
                float(logs["loss"])  # waits for the device
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start  # fit has fetched the last logs

    rng = np.random.default_rng(0)
    count = args.batch * (args.warmup + args.steps)
    images = rng.integers(0, 256, (count, 112, 96, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, count).astype("int32")
    with scope:
        backbone = get_backbone("sphere20", width_multiplier=args.width)
        partial_fc = sample_rate < 1.0
        model = build_training_model(
            backbone, num_classes, mode="cosface", sample_rate=sample_rate, seed=0,
            output_mode="loss" if partial_fc else "logits",
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=(
                precomputed_loss
                if partial_fc
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            ),
            jit_compile=True,
        )
        timer = StepTimer()
        model.fit({"images": images, "labels": labels}, labels, batch_size=args.batch,
                  epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    estimate = memory_per_device(
        num_classes, len(devices), args.batch, sample_rate=sample_rate
    )["total"]
    peak, memory_kind = _peak_memory_bytes(len(devices))
    return {
        "classes": num_classes,
        "sample_rate": sample_rate,
        "img_per_s": args.batch * args.steps / timer.seconds,
        "peak_gb": peak / 2**30,
        "estimate_gb": estimate / 2**30,
        "memory": memory_kind,
        "devices": len(devices),
    }


def _peak_memory_bytes(num_devices):
    """The largest device peak (jax memory_stats), or the process's peak RSS on the CPU."""
    import jax

    stats = [device.memory_stats() for device in jax.local_devices()[:num_devices]]
    if all(stats):
        return max(s["peak_bytes_in_use"] for s in stats), "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"  # KiB


def print_memory_table():
    """Markdown table of the class-dependent memory per device, 128 images per device."""
    from keras_sphereface.distribution import memory_per_device

    parts = ("kernel", "momentum", "gradient", "logits", "total")
    print("GiB per device (keras_sphereface.memory_per_device):\n")
    print("| identities | devices | global batch | " + " | ".join(parts) + " |")
    print("|---:" * (3 + len(parts)) + "|")
    for num_classes in (100_000, 1_000_000, 2_000_000, 10_000_000):
        for num_devices in (1, 8, 64):
            sizes = memory_per_device(num_classes, num_devices, batch_size=128 * num_devices)
            print(f"| {num_classes:,} | {num_devices} | {128 * num_devices} | "
                  + " | ".join(f"{sizes[part] / 2**30:.2f}" for part in parts) + " |")


def main():
    args = parse_args()
    if args.memory_table:
        print_memory_table()
        return
    if args.child:
        classes, sample_rate = args.child.split(",")
        print(json.dumps(run_configuration(args, int(classes), float(sample_rate))))
        return
    # children: the JAX backend, memory allocated as used so that the peak and OOM are real
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    print(f"sphere20 width {args.width}, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup}, policy {args.policy}, {'sharded' if args.shard else 'one device'}")
    print(f"{'classes':>10} {'rate':>5} {'img/s':>9} {'ratio':>6} {'peak GB':>8} "
          f"{'est. GB':>8}  memory")
    baseline = None
    for num_classes in args.classes:
        for sample_rate in args.sample_rates:
            result = _run_child(num_classes, sample_rate, env)
            if "error" in result:
                print(f"{num_classes:>10} {sample_rate:>5} {result['error']}", flush=True)
                continue
            baseline = baseline or result["img_per_s"]
            print(f"{num_classes:>10} {sample_rate:>5} {result['img_per_s']:>9.1f} "
                  f"{result['img_per_s'] / baseline:>6.2f} {result['peak_gb']:>8.2f} "
                  f"{result['estimate_gb']:>8.2f}  {result['memory']}, {result['devices']} "
                  "device(s)", flush=True)
    print("ratio: img/s against the first row; est.: memory_per_device (class-dependent part)")


def _run_child(num_classes, sample_rate, env):
    command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:],
               "--child", f"{num_classes},{sample_rate}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
    out_of_memory = "RESOURCE_EXHAUSTED" in done.stderr or "out of memory" in done.stderr.lower()
    return {"error": "out of memory" if out_of_memory else f"failed: {tail[0][:200]}"}


if __name__ == "__main__":
    main()
