"""What each margin does to the features: GUIDE §1's generalized table, drawn on digits.

A tiny CNN with a 2-D embedding (3-D for A-Softmax on the sphere, the paper's Fig. 5) is
trained on 70 % of scikit-learn's bundled digits for each row of the table

    true-class logit = s · ‖W_y‖^(1−w_norm) ‖x‖^(1−x_norm) · (cos(m1·θ_y + m2) − m3)

(m1 > 1 through A-Softmax's monotone ψ, λ-annealed), mapped onto `MarginSoftmax` modes; the
held-out 30 % are scattered with the class-centre directions (the normalized weight
columns). Prints alignment and uniformity (Wang & Isola 2020; lower is better) of the
held-out features and the held-out classification accuracy per mode.

    python examples/visualize_margins.py [--output margins.png] [--epochs 40]

About 3 minutes on 2 CPU cores; any Keras backend (KERAS_BACKEND=jax works).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from keras_sphereface import digits, hypersphere  # noqa: E402
from keras_sphereface.atomic import atomic_path  # noqa: E402
from keras_sphereface.models import embedding_model  # noqa: E402

# A-Softmax / L-Softmax: λ annealed from 1000 down to λ_min within the first ~200 steps of
# these short runs (the Caffe schedule, base·(1 + γ·it)^−1, with a larger γ).
ANNEALING = {"lambda_gamma": 1.0, "lambda_min": 1.0}

# (title, embedding dim, MarginSoftmax mode, margin, scale, options): the rows of the
# generalized table (w_norm, x_norm, s, m1, m2, m3) of GUIDE §1.
ROWS = (
    ("softmax", 2, "softmax", None, None, {}),
    ("L-softmax_v1 (m1=2)", 2, "lsoftmax", 2, None, ANNEALING),
    ("A-softmax_v1 (m1=2)", 2, "sphereface", 2, None, ANNEALING),
    ("A-softmax_v2 (m1=3)", 2, "sphereface", 3, None, ANNEALING),
    ("norm-softmax (s=1)", 2, "normface", None, 1.0, {}),
    ("CosFace_v1 (s=4, m3=0.1)", 2, "cosface", 0.1, 4.0, {}),
    ("CosFace_v2 (s=4, m3=0.2)", 2, "cosface", 0.2, 4.0, {}),
    ("ArcFace_v1 (s=4, m2=0.1)", 2, "arcface", 0.1, 4.0, {}),
    ("ArcFace_v2 (s=4, m2=0.2)", 2, "arcface", 0.2, 4.0, {}),
    ("ArcFace_v3 (s=4, m2=0.3)", 2, "arcface", 0.3, 4.0, {}),
    ("A-softmax_v1 3-D (m1=2)", 3, "sphereface", 2, None, ANNEALING),
    ("A-softmax m1=4, 3-D", 3, "sphereface", 4, None, ANNEALING),
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="margins.png", help="PNG grid to write")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images, labels = digits.load_digits_rgb()
    split = digits.open_set_split(labels, range(10), test_fraction=0.3, seed=args.seed)
    train, test = split["train"], split["seen_test"]
    columns = 4
    grid_rows = int(np.ceil(len(ROWS) / columns))
    figure = plt.figure(figsize=(3.2 * columns, 3.4 * grid_rows), layout="constrained")
    print(f"{'loss':<28} {'test acc':>8} {'align':>7} {'uniform':>8} {'seconds':>7}")
    for index, (title, dim, mode, margin, scale, options) in enumerate(ROWS):
        started = time.time()
        model = digits.train_digits_model(
            images[train], labels[train], 10, mode=mode, margin=margin, scale=scale,
            embedding_dim=dim, epochs=args.epochs, seed=args.seed, **options,
        )
        backbone = embedding_model(model)
        head = digits.margin_head(model)
        features = digits.embed(backbone, images[test])
        predicted = np.argmax(keras.ops.convert_to_numpy(head(features)), axis=1)
        accuracy = float(np.mean(predicted == labels[test]))
        metrics = hypersphere.alignment_and_uniformity(features, labels[test])
        print(f"{title:<28} {100 * accuracy:7.1f}% {metrics['alignment']:7.3f} "
              f"{metrics['uniformity']:8.3f} {time.time() - started:7.1f}", flush=True)
        ax = figure.add_subplot(grid_rows, columns, index + 1,
                                projection="3d" if dim == 3 else None)
        centres = hypersphere.class_centre_directions(keras.ops.convert_to_numpy(head.kernel))
        hypersphere.plot_features(
            ax, features, labels[test], centres=centres,
            title=f"{title}\nacc {100 * accuracy:.1f}%  align {metrics['alignment']:.2f}  "
                  f"unif {metrics['uniformity']:.2f}",
            class_names=[str(d) for d in range(10)] if index == 0 else None,
        )
    figure.suptitle("Held-out digit features (lines: class-centre directions)", fontsize=11)
    with atomic_path(args.output) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    print(f"Wrote {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
