"""sphere20 training throughput on CPU (TensorFlow backend): images/s of a full training step
(forward, loss, backward, SGD update) with and without XLA, MarginSoftmax (A-Softmax) head vs
a plain softmax (Dense) head; ratios against the plain-softmax, no-XLA baseline of the same run.
With --batch-norm, the margin head also on the batch-norm backbone (`batch_norm=True`). The
configurations are timed in interleaved rounds; each reports its fastest round.

    nice -n 10 python bench/cpu_train.py              # sphere20, 10,575 classes (CASIA-WebFace)
    python bench/cpu_train.py --smoke                 # a tiny model, seconds, batch norm included

Synthetic uint8 batches held in memory: this measures the model, not the input pipeline
(bench/input_pipeline.py does that).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_sphereface.backbones import get_backbone  # noqa: E402
from keras_sphereface.models import build_training_model  # noqa: E402
from keras_sphereface.runtime import device_description  # noqa: E402
from keras_sphereface.training import CoupledWeightDecaySGD  # noqa: E402


def training_model(args, head, batch_norm):
    backbone = get_backbone(
        args.backbone, width_multiplier=args.width_multiplier, embedding_dim=args.embedding_dim,
        batch_norm=batch_norm,
    )
    if head == "margin":
        return build_training_model(backbone, args.classes, mode="sphereface")
    images = keras.Input(backbone.input_shape[1:], name="images")
    labels = keras.Input((), dtype="int32", name="labels")  # unused: same inputs as the margin model
    logits = keras.layers.Dense(args.classes, name="softmax")(backbone(images))
    return keras.Model({"images": images, "labels": labels}, logits)


def compiled_model(args, head, xla, batch_norm):
    """A compiled training model and its endless one-batch data set, already traced/compiled."""
    keras.utils.set_random_seed(0)
    model = training_model(args, head, batch_norm)
    model.compile(
        optimizer=CoupledWeightDecaySGD(0.01, momentum=0.9, coupled_weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=xla,
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.batch_size).astype("int32")
    batch = {"images": rng.integers(0, 256, (args.batch_size, 112, 96, 3)).astype("uint8"), "labels": labels}
    data = tf.data.Dataset.from_tensors((batch, labels)).repeat()
    model.fit(data, steps_per_epoch=args.warmup, epochs=1, shuffle=False, verbose=0)  # trace/compile
    return model, data


def seconds_per_step(model, data, steps):
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="sphere20")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10575)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing, XLA compile)")
    parser.add_argument("--batch-norm", action="store_true",
                        help="also time the margin head on the batch-norm backbone")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps")
    args = parser.parse_args()
    if args.smoke:
        args.backbone, args.width_multiplier, args.embedding_dim = "sphere4", 0.125, 32
        args.classes, args.batch_size, args.steps, args.warmup, args.rounds = 100, 8, 3, 1, 2
        args.batch_norm = True

    print(
        f"{args.backbone} ×{args.width_multiplier} width, {args.embedding_dim}-d, {args.classes} "
        f"classes, batch {args.batch_size}, best of {args.rounds} rounds of {args.steps} steps; keras {keras.__version__}, "
        f"tensorflow {tf.__version__}, {device_description()}"
    )
    # (head, batch-norm backbone): the margin head on the batch-norm backbone with --batch-norm
    heads = [("softmax", False), ("margin", False)] + ([("margin", True)] if args.batch_norm else [])
    configurations = [(head, batch_norm, xla) for head, batch_norm in heads for xla in (False, True)]
    models = {(head, batch_norm, xla): compiled_model(args, head, xla, batch_norm)
              for head, batch_norm, xla in configurations}
    # rounds interleave the configurations, and the fastest round counts: on a shared machine
    # this keeps a burst of someone else's load from landing on one configuration only
    best = {config: float("inf") for config in configurations}
    for _ in range(args.rounds):
        for config in configurations:
            best[config] = min(best[config], seconds_per_step(*models[config], args.steps))
    results = {config: args.batch_size / best[config] for config in configurations}
    baseline = results["softmax", False, False]
    print(f"{'head':<30} {'XLA':<4} {'img/s':>8} {'vs softmax, no XLA':>20}")
    names = {("softmax", False): "plain softmax (Dense)", ("margin", False): "MarginSoftmax (A-Softmax)",
             ("margin", True): "MarginSoftmax, BN backbone"}
    for (head, batch_norm, xla), speed in results.items():
        print(f"{names[head, batch_norm]:<30} {'on' if xla else 'off':<4} {speed:8.2f} "
              f"{speed / baseline:19.2f}x")
    for head, batch_norm in heads:
        print(f"XLA speed-up, {names[head, batch_norm]}: "
              f"{results[head, batch_norm, True] / results[head, batch_norm, False]:.2f}x")
    for xla in (False, True):
        print(
            f"MarginSoftmax cost, XLA {'on' if xla else 'off'}: "
            f"{results['margin', False, xla] / results['softmax', False, xla]:.2f}x the plain softmax speed"
        )
        if args.batch_norm:
            print(
                f"batch-norm backbone, XLA {'on' if xla else 'off'}: "
                f"{results['margin', True, xla] / results['margin', False, xla]:.2f}x the speed "
                "without batch norm"
            )


if __name__ == "__main__":
    main()
