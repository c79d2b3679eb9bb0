"""The margin family on LFW, identity-disjoint: train without fold k's people, score fold k.

LFW View 2's 10 folds are identity-disjoint (../shared/data/README.md). For each fold k
this script trains a model on every LFW identity that does not occur in fold k (the people of
the other 9 folds and the 1,468 people in no pair), and scores fold k's 600 pairs with it, so
no evaluated person is ever seen in training. The 6,000 held-out cosine scores then go
through the standard protocol (`evaluation.protocol.verification_protocol`): the threshold
of fold k is chosen on the other 9 folds' held-out scores, accuracy is reported as mean ±
std over the folds. Mean-feature subtraction is off: the 10 models have 10 feature spaces.

The deep-funneled 250×250 frames are aligned once onto the 112×96 template with the
package's shipped LFW landmarks (`alignment.align_folder`, into OUTPUT/aligned_112x96).
Training is `keras_sphereface.training.train` (SGD momentum 0.9, weight decay 5e-4, the
paper's step schedule, horizontal flips, crops cached in memory); every run has its own run
directory, so an interrupted sweep continues where it stopped.

    # the README table (GPU machine, Keras JAX backend):
    KERAS_BACKEND=jax python examples/lfw_identity_disjoint.py --output runs/lfw_disjoint \\
        --configs softmax,a-softmax,cosface,arcface,a-softmax-m1,a-softmax-m2,a-softmax-m3 \\
        --backbone sphere20 --epochs 30 --mixed-precision bfloat16
    # a CPU-scale check of the whole flow (tiny backbone, fold 0, 2,000 training images):
    python examples/lfw_identity_disjoint.py --smoke --output /tmp/lfw_smoke

Writes OUTPUT/results.json (every fold's accuracy, timings, device, settings) and
OUTPUT/results.md (the table). The sweep can be split into pieces (`--configs a-softmax
--folds 0,1,2`, e.g. to fit a time limit per command): finished runs are skipped and their
fold embeddings cached, so a last call with every fold only scores.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from keras_sphereface.alignment import align_folder, lfw_landmarks_path  # noqa: E402
from keras_sphereface.atomic import atomic_path  # noqa: E402
from keras_sphereface.data import scan_identity_folder  # noqa: E402
from keras_sphereface.errors import UserInputError  # noqa: E402
from keras_sphereface.evaluation import load_embedder, read_pairs  # noqa: E402
from keras_sphereface.evaluation.extract import extract_embeddings  # noqa: E402
from keras_sphereface.evaluation.lfw import LFW_IMAGES, LFW_PAIRS, resolve_lfw_dir  # noqa: E402
from keras_sphereface.evaluation.protocol import verification_protocol  # noqa: E402
from keras_sphereface.training import resume, train  # noqa: E402

# name -> (MarginSoftmax mode, margin, scale)
CONFIGS = {
    "softmax": ("softmax", None, None),
    "a-softmax": ("sphereface", 4, None),
    "cosface": ("cosface", 0.35, 30.0),
    "arcface": ("arcface", 0.5, 30.0),
    "curricularface": ("curricularface", 0.5, 30.0),
    "a-softmax-m1": ("sphereface", 1, None),
    "a-softmax-m2": ("sphereface", 2, None),
    "a-softmax-m3": ("sphereface", 3, None),
}
# the aligned crops: OUTPUT/ALIGNED/NAME/NAME_0001.jpg
ALIGNED = "aligned_112x96"
SMOKE = {
    "configs": "softmax",
    "folds": "0",
    "backbone": "sphere4",
    "width_multiplier": 0.125,
    "embedding_dim": 128,
    "epochs": 1,
    "batch_size": 64,
    "learning_rate": 0.01,
    "max_train_images": 2000,
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw-dir", default=None, help="LFW folder (default: $LFW_DIR)")
    parser.add_argument("--output", default="runs/lfw_identity_disjoint")
    parser.add_argument("--landmarks", default=None,
                        help="landmarks file of lfw-deepfunneled (default: the shipped one)")
    parser.add_argument("--configs", default="softmax,a-softmax,cosface,arcface",
                        help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--folds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--backbone", default="sphere20")
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--mixed-precision", choices=["bfloat16", "float16"], default=None)
    parser.add_argument("--max-train-images", type=int, default=None,
                        help="train on a seeded random subset of this many images (CPU checks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="CPU-scale run: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    args.configs = args.configs.split(",")
    args.folds = [int(fold) for fold in args.folds.split(",")]
    return args


def device_description():
    """Backend and accelerator, e.g. "jax on NVIDIA H100 80GB HBM3" or "tensorflow on CPU"."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        kinds = sorted({device.device_kind for device in jax.devices()})
        return f"jax on {', '.join(kinds)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"tensorflow on {len(gpus)} GPU(s)" if gpus else f"tensorflow on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return backend


def align_lfw(output, images_dir, landmarks_path):
    """Align every LFW image once onto the 112×96 template into OUTPUT/ALIGNED (resumable);
    the training runs and the extraction then read small crops instead of warping frames."""
    aligned_dir = os.path.join(output, ALIGNED)
    counts = align_folder(images_dir, aligned_dir, size=(112, 96), from_landmarks=landmarks_path)
    print(f"aligned LFW into {aligned_dir}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int) and v))
    return aligned_dir


def prepare_training_lists(output, aligned_dir, pairs, folds, max_images, seed):
    """Per fold k, a list file OUTPUT/train_fold{k}.txt of the crops of every identity absent
    from fold k (paths relative to OUTPUT, labels 0..C-1)."""
    index = scan_identity_folder(aligned_dir)
    names = np.array(index.class_names)[index.labels]
    lists = {}
    for fold in folds:
        in_fold = {relpath.split("/")[0] for side in (pairs.left, pairs.right)
                   for relpath, f in zip(side, pairs.folds) if f == fold}
        keep = np.flatnonzero(~np.isin(names, sorted(in_fold)))
        if max_images is not None and max_images < len(keep):
            keep = np.sort(np.random.default_rng(seed).choice(keep, max_images, replace=False))
        identities = sorted(set(names[keep]))
        label_of = {name: label for label, name in enumerate(identities)}
        path = os.path.join(output, f"train_fold{fold}.txt")
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"# LFW crops of the {len(identities)} identities absent from fold {fold}\n")
                for i in keep:
                    f.write(f"{ALIGNED}/{index.paths[i]} {label_of[names[i]]}\n")
        lists[fold] = path
        print(f"fold {fold}: {len(in_fold)} identities held out; training on {len(keep)} images "
              f"of {len(identities)} identities")
    return lists


def run_fold(args, name, fold, list_path, aligned_dir, pairs):
    """Train (or resume) the fold's model; return its left/right features of fold `fold`."""
    mode, margin, scale = CONFIGS[name]
    run_dir = os.path.join(args.output, name, f"fold{fold}")
    started = time.time()
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        result = resume(run_dir)
    else:
        result = train(
            list_path, run_dir, backbone=args.backbone, mode=mode, margin=margin, scale=scale,
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
            width_multiplier=args.width_multiplier, embedding_dim=args.embedding_dim,
            mixed_precision=args.mixed_precision, cache=True, seed=args.seed, verbose=2,
        )
    train_seconds = time.time() - started
    if result.stopped:
        raise SystemExit(f"{run_dir}: training {result.stopped}; rerun to continue")
    test = pairs.folds == fold
    relpaths = sorted(set(np.array(pairs.left)[test]) | set(np.array(pairs.right)[test]))
    embeddings, _ = extract_embeddings(
        load_embedder(run_dir), relpaths, aligned_dir,
        cache_path=os.path.join(run_dir, f"fold{fold}_embeddings.npz"),
        cache_settings={"run": os.path.abspath(run_dir), "epochs": result.epochs_done},
        progress=False,
    )
    left = np.stack([embeddings[p] for p in np.array(pairs.left)[test]])
    right = np.stack([embeddings[p] for p in np.array(pairs.right)[test]])
    return left, right, train_seconds


def main():
    args = parse_args()
    lfw_dir = resolve_lfw_dir(args.lfw_dir)
    images_dir = lfw_dir / LFW_IMAGES
    pairs = read_pairs(lfw_dir / LFW_PAIRS, images_dir)
    aligned_dir = align_lfw(args.output, images_dir, args.landmarks or lfw_landmarks_path())
    lists = prepare_training_lists(
        args.output, aligned_dir, pairs, args.folds, args.max_train_images, args.seed
    )
    device = device_description()
    results = {"device": device, "settings": {k: v for k, v in vars(args).items()}, "configs": {}}
    for name in args.configs:
        fold_features, seconds = {}, {}
        for fold in args.folds:
            print(f"== {name}, fold {fold} ==", flush=True)
            left, right, seconds[fold] = run_fold(
                args, name, fold, lists[fold], aligned_dir, pairs
            )
            fold_features[fold] = (left, right)
        scored = np.isin(pairs.folds, args.folds)
        order = np.concatenate([np.flatnonzero(pairs.folds == fold) for fold in args.folds])
        left = np.concatenate([fold_features[fold][0] for fold in args.folds])
        right = np.concatenate([fold_features[fold][1] for fold in args.folds])
        entry = {"train_seconds": seconds, "folds": args.folds}
        if len(args.folds) >= 2:
            report, _ = verification_protocol(
                left, right, pairs.is_same[order], pairs.folds[order], mean_subtraction=False
            )
            entry.update(report)
        else:  # one fold: no other fold to pick the threshold on; report the best threshold
            from keras_sphereface.evaluation.protocol import best_threshold, cosine_scores

            _, accuracy = best_threshold(cosine_scores(left, right), pairs.is_same[scored])
            entry.update(oracle_threshold_accuracy=accuracy)
        results["configs"][name] = entry
        print(f"{name}: {summary(entry)}", flush=True)
        write_results(args.output, results)
    print(f"Wrote {os.path.join(os.path.abspath(args.output), 'results.md')} and results.json")


def summary(entry):
    if "accuracy_mean" in entry:
        return (f"{100 * entry['accuracy_mean']:.2f} ± {100 * entry['accuracy_std']:.2f} % "
                f"over {len(entry['folds'])} folds")
    return (f"{100 * entry['oracle_threshold_accuracy']:.2f} % on fold {entry['folds'][0]} "
            f"(threshold chosen on that fold: an optimistic single-fold check, not the protocol)")


def write_results(output, results):
    with atomic_path(os.path.join(output, "results.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
    settings = results["settings"]
    lines = [
        f"LFW identity-disjoint ({settings['backbone']}, width {settings['width_multiplier']}, "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}; {results['device']})",
        "",
        "| config | LFW accuracy | training time per fold |",
        "|---|---|---|",
    ]
    for name, entry in results["configs"].items():
        minutes = np.mean(list(entry["train_seconds"].values())) / 60
        lines.append(f"| {name} | {summary(entry)} | {minutes:.1f} min |")
    with atomic_path(os.path.join(output, "results.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except UserInputError as error:
        raise SystemExit(f"Error: {error}") from None
