"""Overhead of MarginSoftmax over a plain Dense softmax head (forward + backward).

For each number of classes and each mode, times one forward + backward step (cross-entropy
loss, gradients w.r.t. the features and the head's weights) of `MarginSoftmax` and of
`keras.layers.Dense` + softmax on the same features and labels, in the same run, on the
TensorFlow backend (`tf.function`, CPU unless a GPU is visible), and prints the median times
and their ratio. Target of issue 3: ratio <= 1.10 for every mode. The Dense head has the
same weights as the margin head: a bias only for mode "softmax" (the only mode with one),
so the ratio is the cost of the normalization and the margin, not of a missing bias.

It also times the whole training step of each head (forward, backward, and the update of
SGD with momentum 0.9, which applies the kernel's constraint: the column projection of
weight_normalization="projected" is paid there), and prints that ratio beside it.

The ratio is the median over alternating Dense / MarginSoftmax steps of their CPU-time ratio
(CPU time summed over this process's threads stays stable when other jobs share the
machine, and alternating makes both sides of each ratio run under the same load); the
modes take turns in rounds (3 rounds of 8 pairs by default), so that a slow spell of a
shared machine is spread over every mode. Median wall-clock times are printed beside it.

    python bench/margin_overhead.py            # 10k and 100k classes, batch 256, 512-d
    python bench/margin_overhead.py --smoke    # 1k classes, a few repeats: seconds
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sphereface.margins import MarginSoftmax  # noqa: E402
from keras_sphereface.runtime import device_description  # noqa: E402

MODES = ("softmax", "lsoftmax", "sphereface", "normface", "cosface", "arcface", "combined",
         "curricularface")


def make_step(head, with_labels, jit_compile=False):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def step(features, labels):
        with tf.GradientTape() as tape:
            tape.watch(features)
            logits = head([features, labels], training=True) if with_labels else head(features)
            loss = loss_fn(labels, logits)
        return tape.gradient(loss, [features] + head.trainable_variables)

    return step


def make_train_step(head, with_labels):
    """Forward, backward and an SGD-with-momentum update (with the variables' constraints)."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(head.trainable_variables)

    @tf.function
    def step(features, labels):
        with tf.GradientTape() as tape:
            logits = head([features, labels], training=True) if with_labels else head(features)
            loss = loss_fn(labels, logits)
        optimizer.apply(tape.gradient(loss, head.trainable_variables), head.trainable_variables)
        return loss

    return step


def run_once(step, features, labels):
    """CPU time (all threads of this process) and wall time of one step."""
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), step(features, labels))
    return time.process_time() - start_cpu, time.perf_counter() - start_wall


def alternating_runs(dense_step, margin_step, features, labels, repeats):
    """`repeats` (dense, margin) pairs of runs, one right after the other: (cpu, wall) lists."""
    dense, margin = [], []
    for _ in range(repeats):
        dense.append(run_once(dense_step, features, labels))
        margin.append(run_once(margin_step, features, labels))
    return dense, margin


def summarize(dense, margin):
    """Median times of both steps and the median of their per-pair CPU-time ratios."""
    ratios = [m[0] / d[0] for d, m in zip(dense, margin)]
    return (
        [statistics.median(t[i] for t in dense) for i in (0, 1)],
        [statistics.median(t[i] for t in margin) for i in (0, 1)],
        statistics.median(ratios),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=8, help="pairs of runs per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which every mode takes its turn")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--sample-rate", type=float, default=1.0,
                        help="Partial FC rate for MarginSoftmax (default 1: the full layer)")
    parser.add_argument("--weight-normalization", choices=["projected", "reparametrized"],
                        help="MarginSoftmax's weight_normalization (default: the layer's own)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="compile both steps with XLA (fuses the element-wise passes; what "
                             "JAX and TF on GPU do; Keras's TF trainer turns XLA off on CPU)")
    parser.add_argument("--smoke", action="store_true", help="1k classes, 3 repeats")
    args = parser.parse_args()
    if args.smoke:
        args.classes, args.repeats, args.rounds = [1000], 3, 1

    rng = np.random.default_rng(0)
    print(f"{device_description()}, "
          f"batch {args.batch}, dim {args.dim}, median of {args.rounds} rounds × "
          f"{args.repeats} pairs, "
          f"sample_rate {args.sample_rate}, XLA {args.jit_compile}, "
          f"weight_normalization {args.weight_normalization or 'default'}")
    print(f"{'classes':>8} {'mode':>15} {'dense cpu ms':>13} {'margin cpu ms':>14} {'ratio':>6}"
          f" {'dense wall ms':>14} {'margin wall ms':>15} {'wall ratio':>10}"
          f" {'train-step ratio':>17}")
    worst = worst_train_step = 0.0
    for num_classes in args.classes:
        features = tf.constant(rng.standard_normal((args.batch, args.dim), dtype=np.float32))
        labels = tf.constant(rng.integers(0, num_classes, args.batch), dtype=tf.int32)
        steps = {}
        for mode in args.modes:
            options = {}
            if args.weight_normalization and mode not in ("softmax", "lsoftmax"):
                options["weight_normalization"] = args.weight_normalization
            head = MarginSoftmax(num_classes, mode=mode, sample_rate=args.sample_rate, **options)
            head.build([(None, args.dim), (None,)])
            dense = keras.layers.Dense(num_classes, use_bias=head.bias is not None)
            dense.build((None, args.dim))
            steps[mode] = {
                "step": (make_step(dense, False, args.jit_compile),
                         make_step(head, True, args.jit_compile)),
                "train": (make_train_step(dense, False), make_train_step(head, True)),
            }
            for step in (*steps[mode]["step"], *steps[mode]["train"]):  # trace + warm up
                run_once(step, features, labels)
                run_once(step, features, labels)
        # the modes take turns round by round, so a slow spell of the machine is spread
        # over all of them instead of falling on one
        runs = {mode: {kind: ([], []) for kind in ("step", "train")} for mode in args.modes}
        for _ in range(args.rounds):
            for mode in args.modes:
                for kind in ("step", "train"):
                    dense, margin = alternating_runs(*steps[mode][kind], features, labels,
                                                     args.repeats)
                    runs[mode][kind][0].extend(dense)
                    runs[mode][kind][1].extend(margin)
        for mode in args.modes:
            (dense_cpu, dense_wall), (margin_cpu, margin_wall), ratio = summarize(
                *runs[mode]["step"]
            )
            _, _, train_step_ratio = summarize(*runs[mode]["train"])
            worst = max(worst, ratio)
            worst_train_step = max(worst_train_step, train_step_ratio)
            print(f"{num_classes:>8} {mode:>15} {dense_cpu * 1e3:>13.1f} {margin_cpu * 1e3:>14.1f} "
                  f"{ratio:>6.2f} {dense_wall * 1e3:>14.1f} {margin_wall * 1e3:>15.1f} "
                  f"{margin_wall / dense_wall:>10.2f} {train_step_ratio:>17.2f}", flush=True)
        del steps, runs
    print(f"worst forward+backward ratio {worst:.2f} (target <= 1.10); "
          f"worst train-step ratio {worst_train_step:.2f}")


if __name__ == "__main__":
    main()
