"""The margin family on LFW, identity-disjoint: train without fold k's people, score fold k.

LFW View 2's 10 folds are identity-disjoint (../shared/data/README.md). For each fold k
this script trains a model on every LFW identity that does not occur in fold k (the people of
the other 9 folds and the 1,468 people in no pair), and scores fold k's 600 pairs with it, so
no evaluated person is ever seen in training. The 6,000 held-out cosine scores then go
through the standard protocol (`evaluation.protocol.scores_protocol`): the threshold of
fold k is chosen on the other 9 folds' held-out scores, accuracy is reported as mean ± std
over the folds. Mean-feature subtraction is off: the 10 models have 10 feature spaces.
`--min-images-per-identity N` trains on only the identities with at least N images.

The deep-funneled 250×250 frames are aligned once onto the 112×96 template with the
package's shipped LFW landmarks (`alignment.align_folder`, into OUTPUT/aligned_112x96).
Training is `keras_sphereface.training.train` (SGD momentum 0.9, weight decay 5e-4 or
`--weight-decay`, the paper's step schedule after train's default warmup: 2 epochs for
CosFace / ArcFace / CurricularFace, none for softmax and A-Softmax; the reparametrized head;
horizontal flips, with `--jitter` also train's random similarity transforms; `--batch-norm`
the backbone's batch-norm variant; crops cached in memory); every run has its own run
directory, so an interrupted sweep continues where it stopped.

    # the README table (GPU machine, Keras JAX backend):
    KERAS_BACKEND=jax python examples/lfw_identity_disjoint.py --output runs/lfw_disjoint \\
        --configs all \\
        --backbone sphere20 --epochs 30 --mixed-precision bfloat16
    # the CPU recipe (~15 min a run on 2 cores), in pieces that fit a session:
    python examples/lfw_identity_disjoint.py --output runs/lfw_disjoint_cpu --backbone sphere10 \\
        --width-multiplier 0.25 --embedding-dim 128 --batch-size 64 --learning-rate 0.04 \\
        --epochs 20 --configs a-softmax,softmax,cosface,arcface --max-minutes 60
    # a CPU-scale check of the whole flow (tiny backbone, fold 0, 2,000 training images):
    python examples/lfw_identity_disjoint.py --smoke --output /tmp/lfw_smoke

Every finished (config, fold) adds its 600 held-out cosine scores, training time and device
to the results file (`--results`, default examples/results/lfw_identity_disjoint.json, kept
in the repository), under a key naming the training recipe; a (config, fold) already there
is skipped, so the sweep accumulates across machines and sessions, and `--max-minutes`
stops it between runs to fit a time limit. Runs go fold by fold (every config on fold 0,
then fold 1, ...), so a sweep cut short still compares the configs on the same folds. The
table (results.md beside the results file) comes from the scores alone: the protocol over
every fold done (10 for the real figure), then each of COMPARISONS (the margin family, the
A-Softmax ablation, the additive margins' size) on the folds all its configs scored.
Training runs live under OUTPUT (checkpoints, resumable); OUTPUT can be deleted once a
run's scores are recorded. `--aligned-dir` reuses crops aligned earlier (the LFW folder then
needs only pairs.txt), `--merge FILE` adds the runs another machine recorded in its copy of
the results file; bench/device_lfw_sweep.py uses both to run the GPU recipe on a machine
without TensorFlow, network or LFW.

`--fuse MEMBER ...` trains nothing: it scores an ensemble of recorded runs, each MEMBER a
config and the settings that pick its recipe (CONFIG@SETTING=VALUE,..., e.g.
`arcface@epochs=60 a-softmax@epochs=45,jitter=0.05`). Per pair the fused score is the mean
of the members' cosine scores, which is the cosine of the members' unit embeddings
concatenated; the protocol then runs on the folds every member scored.
"""

import argparse
import contextlib
import json
import os
import sys
import time

try:
    import fcntl
except ImportError:  # Windows: no locking; one sweep at a time per results file
    fcntl = None

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from keras_sphereface import MarginSoftmax  # noqa: E402
from keras_sphereface.alignment import align_folder, lfw_landmarks_path  # noqa: E402
from keras_sphereface.atomic import atomic_path  # noqa: E402
from keras_sphereface.data import scan_identity_folder  # noqa: E402
from keras_sphereface.errors import UserInputError  # noqa: E402
from keras_sphereface.evaluation import load_embedder, read_pairs  # noqa: E402
from keras_sphereface.evaluation.extract import extract_embeddings  # noqa: E402
from keras_sphereface.evaluation.lfw import LFW_IMAGES, LFW_PAIRS, resolve_lfw_dir  # noqa: E402
from keras_sphereface.evaluation.protocol import (  # noqa: E402
    best_threshold,
    cosine_scores,
    scores_protocol,
)
from keras_sphereface.runtime import device_description  # noqa: E402
from keras_sphereface.training import resume, train  # noqa: E402
from keras_sphereface.training.trainer import default_warmup_epochs, read_config  # noqa: E402

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
    # smaller additive margins: under the jitter CosFace and ArcFace stay far from fitting
    "cosface-m0.2": ("cosface", 0.2, 30.0),
    "arcface-m0.3": ("arcface", 0.3, 30.0),
}
# the comparisons the table draws, each on the folds all its configs scored (issue 10: the
# margin family against softmax, the SphereFace paper's ablation over m, and CosFace's and
# ArcFace's margins)
COMPARISONS = {
    "The margin family": ("softmax", "a-softmax", "cosface", "arcface", "curricularface"),
    "The A-Softmax ablation": ("softmax", "a-softmax-m1", "a-softmax-m2", "a-softmax-m3",
                               "a-softmax"),
    "The additive margins' size": ("softmax", "cosface-m0.2", "cosface", "arcface-m0.3",
                                   "arcface"),
}
# the aligned crops: OUTPUT/ALIGNED/NAME/NAME_0001.jpg
ALIGNED = "aligned_112x96"
DEFAULT_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                               "lfw_identity_disjoint.json")
# the settings that change what a run learns: a recipe's key in the results file
RECIPE = ("backbone", "width_multiplier", "embedding_dim", "epochs", "batch_size",
          "learning_rate", "mixed_precision", "max_train_images", "seed", "weight_normalization",
          "warmup_epochs")
# settings added after the first recipes were recorded: part of a recipe's key only when they
# differ from the value those recipes had, so their keys stay as they were
LATER_RECIPE = {"jitter": 0.0, "weight_decay": 5e-4, "min_images_per_identity": 1,
                "batch_norm": False}
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
    parser.add_argument("--aligned-dir", default=None,
                        help="LFW already aligned onto the 112x96 template (NAME/NAME_0001.jpg, "
                             "as OUTPUT/aligned_112x96 of an earlier sweep): no alignment, and "
                             "the LFW folder needs only pairs.txt")
    parser.add_argument("--landmarks", default=None,
                        help="landmarks file of lfw-deepfunneled (default: the shipped one)")
    parser.add_argument("--configs", default="softmax,a-softmax,cosface,arcface",
                        help=f"comma-separated, from {', '.join(CONFIGS)}; or all")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="only every N-th of the configs, from the I-th (0-based): N sweeps "
                             "side by side share one results file")
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
    parser.add_argument("--min-images-per-identity", type=int, default=1,
                        help="train only on the identities with at least this many images "
                             "(LFW: 4,069 of its 5,749 people have one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-normalization", choices=["reparametrized", "projected"],
                        default="reparametrized",
                        help="the class centres of the configs that normalize them (MarginSoftmax)")
    parser.add_argument("--warmup-epochs", type=float, default=None,
                        help="linear lr warmup (default: train's, 2 epochs for CosFace / ArcFace "
                             "/ CurricularFace, 0 for softmax and A-Softmax)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="train's random scale/rotation/shift augmentation (0: flips only)")
    parser.add_argument("--weight-decay", type=float, default=5e-4,
                        help="train's coupled (L2) weight decay of the SGD")
    parser.add_argument("--batch-norm", action="store_true",
                        help="the backbone's batch-norm variant (OpenSphere's SFNet: batch norm "
                             "after every convolution and after fc5)")
    parser.add_argument("--results", default=None,
                        help="results file the scores accumulate in (default: "
                             "examples/results/lfw_identity_disjoint.json; OUTPUT/results.json "
                             "with --smoke)")
    parser.add_argument("--merge", default=None, metavar="FILE",
                        help="add the runs recorded in FILE (another machine's results file) "
                             "that the results file lacks, rewrite the table, and stop")
    parser.add_argument("--fuse", nargs="+", default=None, metavar="MEMBER",
                        help="score the ensemble of recorded runs (CONFIG@SETTING=VALUE,... "
                             "each, e.g. arcface@epochs=60): mean cosine per pair; no training")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no further (config, fold) run after this many minutes")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU-scale run: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    args = parser.parse_args()
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.configs = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    unknown = [name for name in args.configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)} or all")
    if args.shard is not None:
        index, _, count = args.shard.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            parser.error(f"expected --shard I/N with 0 <= I < N; received {args.shard!r}")
        if int(index) >= len(args.configs):
            parser.error(f"--shard {args.shard} leaves none of the {len(args.configs)} "
                         f"configs {','.join(args.configs)}")
        args.configs = args.configs[int(index)::int(count)]
    if args.min_images_per_identity < 1:
        parser.error(f"expected --min-images-per-identity >= 1; received "
                     f"{args.min_images_per_identity}")
    args.folds = [int(fold) for fold in args.folds.split(",")]
    if args.results is None:
        args.results = (os.path.join(args.output, "results.json") if args.smoke
                        else DEFAULT_RESULTS)
    return args


def align_lfw(output, images_dir, landmarks_path):
    """Align every LFW image once onto the 112×96 template into OUTPUT/ALIGNED (resumable);
    the training runs and the extraction then read small crops instead of warping frames."""
    aligned_dir = os.path.join(output, ALIGNED)
    counts = align_folder(images_dir, aligned_dir, size=(112, 96), from_landmarks=landmarks_path)
    print(f"aligned LFW into {aligned_dir}: "
          + ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int) and v))
    return aligned_dir


def prepare_training_lists(output, aligned_dir, pairs, folds, max_images, seed, min_images=1):
    """Per fold k, a list file OUTPUT/train_fold{k}.txt of the crops of every identity absent
    from fold k that has at least `min_images` crops (paths relative to OUTPUT, labels 0..C-1)."""
    os.makedirs(output, exist_ok=True)
    prefix = os.path.relpath(aligned_dir, output)
    index = scan_identity_folder(aligned_dir)
    class_names = np.array(index.class_names)
    names = class_names[index.labels]
    too_few = class_names[np.bincount(index.labels, minlength=len(class_names)) < min_images]
    lists = {}
    for fold in folds:
        in_fold = {relpath.split("/")[0] for side in (pairs.left, pairs.right)
                   for relpath, f in zip(side, pairs.folds) if f == fold}
        keep = np.flatnonzero(~np.isin(names, sorted(in_fold | set(too_few))))
        if max_images is not None and max_images < len(keep):
            keep = np.sort(np.random.default_rng(seed).choice(keep, max_images, replace=False))
        identities = sorted(set(names[keep]))
        label_of = {name: label for label, name in enumerate(identities)}
        path = os.path.join(output, f"train_fold{fold}.txt")
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"# LFW crops of the {len(identities)} identities absent from fold {fold}\n")
                for i in keep:
                    f.write(f"{prefix}/{index.paths[i]} {label_of[names[i]]}\n")
        lists[fold] = path
        print(f"fold {fold}: {len(in_fold)} identities held out; training on {len(keep)} images "
              f"of {len(identities)} identities")
    return lists


def run_fold(args, name, fold, list_path, aligned_dir, pairs):
    """Train (or resume) the fold's model; return the cosine scores of fold `fold`'s pairs
    (in pairs.txt order, None if training diverged), the training time in seconds and, for
    a diverged run, where."""
    mode, margin, scale = CONFIGS[name]
    normalizes_weights = MarginSoftmax(2, mode=mode).normalize_weights
    run_dir = os.path.join(args.output, name, f"fold{fold}")
    options = dict(
        backbone=args.backbone, mode=mode, margin=margin, scale=scale, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        width_multiplier=args.width_multiplier, embedding_dim=args.embedding_dim,
        mixed_precision=args.mixed_precision, seed=args.seed,
        weight_normalization=args.weight_normalization if normalizes_weights else None,
        warmup_epochs=(default_warmup_epochs(mode, scale) if args.warmup_epochs is None
                       else args.warmup_epochs),
        jitter=args.jitter, weight_decay=args.weight_decay, batch_norm=args.batch_norm,
    )
    started = time.time()
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        check_run_recipe(run_dir, options)
        result = resume(run_dir)
    else:
        result = train(list_path, run_dir, cache=True, verbose=2, **options)
    train_seconds = time.time() - started
    if result.stopped == "nan":  # the same seed and order would diverge again: recorded
        return None, train_seconds, f"loss NaN in epoch {result.epochs_done + 1} of {args.epochs}"
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
    return cosine_scores(left, right), train_seconds, None


def check_run_recipe(run_dir, options):
    """Refuse to resume a run dir trained with other settings than this sweep's recipe (its
    scores would be recorded under the wrong recipe)."""
    config = read_config(run_dir)
    for key, value in options.items():
        if config.get(key) != value:
            raise UserInputError(
                f"Expected the run in {run_dir} to have {key}={value!r}, as this sweep's "
                f"recipe. Received: {key}={config.get(key)!r} in its config.json (use another "
                "--output for this recipe)."
            )


class SweepResults:
    """The results file: per recipe (the RECIPE settings), per config and fold, the fold's
    held-out pair scores, training seconds and device. Written atomically after each run."""

    def __init__(self, path):
        self.path = path
        self.data = self._read()

    def _read(self):
        if not os.path.isfile(self.path):
            return {"recipes": {}}
        with open(self.path, encoding="utf-8") as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as error:
                raise UserInputError(
                    f"Expected {self.path} to be a results file written by this script "
                    f"(JSON). Received: {error}"
                ) from None

    @staticmethod
    def recipe_settings(settings):
        """The settings that name a recipe: RECIPE, then LATER_RECIPE's where not the default."""
        named = {name: settings[name] for name in RECIPE}
        named.update({name: settings[name] for name, default in LATER_RECIPE.items()
                      if settings.get(name, default) != default})
        return named

    def recipe_key(self, settings):
        return ", ".join(f"{name}={value}" for name, value in self.recipe_settings(settings).items())

    def runs(self, settings):
        """{config: {fold (str): run}} of a recipe (created empty if new)."""
        recipe = self.data["recipes"].setdefault(
            self.recipe_key(settings),
            {"settings": self.recipe_settings(settings), "runs": {}},
        )
        return recipe["runs"]

    def todo(self, settings):
        """The (config, fold) runs of settings["configs"] x settings["folds"] not yet recorded,
        fold-major: a sweep cut short (--max-minutes) still compares the configs on the same
        folds."""
        done = self.runs(settings)
        return [(name, fold) for fold in settings["folds"] for name in settings["configs"]
                if str(fold) not in done.get(name, {})]

    def record(self, settings, name, fold, scores, train_seconds, device, diverged=None):
        """A finished run: its scores, or (scores None) where its training diverged."""
        outcome = ({"diverged": diverged} if scores is None
                   else {"scores": [round(float(score), 6) for score in scores]})
        with self._locked():  # keep what other processes recorded meanwhile
            self.data = self._read()
            self.runs(settings).setdefault(name, {})[str(fold)] = {
                **outcome,
                "train_seconds": round(train_seconds, 1),
                "device": device,
                "date": time.strftime("%Y-%m-%d"),
            }
            self._write()

    def merge(self, path):
        """Add the runs of another results file (another machine's sweep) that this one
        lacks; a run recorded in both keeps this file's. Returns the added (recipe, config,
        fold)."""
        if not os.path.isfile(path):
            raise UserInputError(f"Expected an existing results file to merge. Received: {path}")
        other = SweepResults(path)
        added = []
        with self._locked():
            self.data = self._read()
            for key, recipe in other.data["recipes"].items():
                mine = self.data["recipes"].setdefault(
                    key, {"settings": recipe["settings"], "runs": {}})["runs"]
                for name, runs in recipe["runs"].items():
                    for fold, run in runs.items():
                        if fold not in mine.setdefault(name, {}):
                            mine[name][fold] = run
                            added.append((key, name, int(fold)))
            self._write()
        return added

    def member_runs(self, member):
        """The runs of one --fuse member, CONFIG@SETTING=VALUE,...: the config's runs in the
        one recipe whose settings have those values (a later setting absent from a recipe's
        key has its default)."""
        name, _, constraints = member.partition("@")
        wanted = dict(item.partition("=")[::2] for item in constraints.split(",") if item)
        settings = RECIPE + tuple(LATER_RECIPE)
        if name not in CONFIGS or set(wanted) - set(settings) or "" in wanted.values():
            raise UserInputError(
                f"Expected --fuse members as CONFIG@SETTING=VALUE,... with CONFIG from "
                f"{', '.join(CONFIGS)} and settings from {', '.join(settings)}. "
                f"Received: {member!r}"
            )
        matches = [key for key, recipe in self.data["recipes"].items() if name in recipe["runs"]
                   and all(_same_setting(recipe["settings"].get(setting, LATER_RECIPE.get(setting)),
                                         value) for setting, value in wanted.items())]
        if len(matches) != 1:
            raise UserInputError(
                f"Expected --fuse {member} to pick one recipe of {self.path} with {name} runs. "
                f"Received: {len(matches)} such recipes" + "".join(f"\n  {key}" for key in matches)
            )
        return self.data["recipes"][matches[0]]["runs"][name]

    def _check_pair_count(self, key, name, fold, run, pairs):
        if "scores" not in run:
            return
        expected = int(np.sum(pairs.folds == int(fold)))
        if len(run["scores"]) != expected:
            raise UserInputError(
                f"Expected the runs in {self.path} to score the {expected} pairs of fold "
                f"{fold} of this pair list. Received: {len(run['scores'])} scores for {name}, "
                f"fold {fold} ({key}): a results file of another pair list (use --results)"
            )

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive over the results file's folder (the file itself is replaced by each
        write), so sweeps sharing one file (bench/device_lfw_sweep.py --jobs) lose no run."""
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        if fcntl is None:
            yield
            return
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _write(self):
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1)
                f.write("\n")

    def table(self, pairs):
        """Markdown: per recipe and config, the protocol over the folds done."""
        lines = []
        for key, recipe in self.data["recipes"].items():
            if not recipe["runs"]:
                continue
            lines += [f"Recipe: {key}", "",
                      "| config | LFW accuracy | folds done | AUC | training time per fold "
                      "| device |",
                      "|---|---|---|---|---|---|"]
            for name, runs in recipe["runs"].items():
                for fold, run in runs.items():
                    self._check_pair_count(key, name, fold, run, pairs)
            lines += [table_row(name, runs, pairs) for name, runs in recipe["runs"].items()]
            lines += ["", *same_folds_lines(recipe["runs"], pairs)]
        return "\n".join(lines)


def same_folds_lines(recipe_runs, pairs):
    """Each comparison's configs on the folds all of them scored (the folds differ while a
    sweep runs, and by divergence): a line per comparison with 2 configs and 2 such folds
    whose rows do not compare already."""
    lines, drawn = [], []
    for comparison, names in COMPARISONS.items():
        scored = {name: set(scored_folds(recipe_runs[name])) for name in names
                  if name in recipe_runs}
        if len(scored) < 2 or set(scored) in drawn:
            continue
        drawn.append(set(scored))
        common = sorted(set.intersection(*scored.values()))
        if len(common) < 2 or all(len(folds) == len(common) for folds in scored.values()):
            continue  # fewer than 2 folds to compare on, or the rows above compare already
        accuracies = []
        for name in scored:
            report = fold_report(recipe_runs[name], common, pairs)
            accuracies.append(f"{name} {100 * report['accuracy_mean']:.2f} ± "
                              f"{100 * report['accuracy_std']:.2f} %")
        lines += [f"{comparison} on the folds all its configs scored "
                  f"({','.join(map(str, common))}): " + ", ".join(accuracies) + ".", ""]
    return lines


def _same_setting(recorded, text):
    """Whether a recorded setting is the --fuse member's VALUE (numbers compared as numbers)."""
    if str(recorded) == text:
        return True
    try:
        return float(recorded) == float(text)
    except (TypeError, ValueError):
        return False


def fused_runs(member_runs):
    """Score-level fusion: on each fold every member scored, the mean of their scores."""
    folds = set.intersection(*(set(scored_folds(runs)) for runs in member_runs))
    return {str(fold): {"scores": np.mean([runs[str(fold)]["scores"] for runs in member_runs],
                                          axis=0).tolist()} for fold in sorted(folds)}


def fusion_table(members, member_runs, pairs):
    """Markdown: each member, then their fusion, by the protocol on the folds all scored."""
    fused = fused_runs(member_runs)
    folds = scored_folds(fused)
    if len(folds) < 2:
        raise UserInputError(
            f"Expected the --fuse members to have scored at least 2 folds in common. "
            f"Received: folds {folds} in common"
        )
    lines = [f"Fusion on folds {','.join(map(str, folds))} (threshold of each fold chosen on "
             "the others):", "", "| member | LFW accuracy | AUC |", "|---|---|---|"]
    for name, runs in [*zip(members, member_runs), ("mean score of the above", fused)]:
        report = fold_report(runs, folds, pairs)
        lines.append(f"| {name} | {100 * report['accuracy_mean']:.2f} ± "
                     f"{100 * report['accuracy_std']:.2f} % | {report['auc']:.4f} |")
    return "\n".join(lines)


def scored_folds(runs):
    """The folds of a config's runs that have scores (not those whose training diverged)."""
    return sorted(int(fold) for fold, run in runs.items() if "scores" in run)


def table_row(name, runs, pairs):
    """A config's Markdown row: the protocol over its folds done (a single fold: the
    accuracy of that fold's own best threshold, marked optimistic); folds whose training
    diverged are named, outside the protocol."""
    diverged = sorted(int(fold) for fold, run in runs.items() if "scores" not in run)
    folds = scored_folds(runs)
    report = fold_report(runs, folds, pairs)
    if not folds:
        accuracy, auc = "–", "–"
    elif report is not None:
        accuracy = f"{100 * report['accuracy_mean']:.2f} ± {100 * report['accuracy_std']:.2f} %"
        auc = f"{report['auc']:.4f}"
    else:  # one fold: no other fold to pick its threshold on
        accuracy = (f"{100 * oracle_accuracy(runs, folds[0], pairs):.2f} % "
                    "(threshold chosen on the fold itself: optimistic)")
        auc = "–"
    finished = [run for run in runs.values() if "scores" in run] or list(runs.values())
    minutes = np.mean([run["train_seconds"] for run in finished]) / 60
    devices = ", ".join(sorted({run["device"] for run in runs.values()}))
    done = f"{len(folds)}/10 ({','.join(map(str, folds))})"
    if diverged:
        done += f"; diverged on {','.join(map(str, diverged))}"
    return f"| {name} | {accuracy} | {done} | {auc} | {minutes:.1f} min | {devices} |"


def oracle_accuracy(runs, fold, pairs):
    """The accuracy of the best threshold on the fold's own scores (a single-fold check)."""
    scores = np.asarray(runs[str(fold)]["scores"])
    return best_threshold(scores, pairs.is_same[pairs.folds == fold])[1]


def fold_report(runs, folds, pairs):
    """The protocol on the recorded scores of `folds` (each threshold chosen on the other
    folds done), or None with fewer than 2 folds."""
    if len(folds) < 2:
        return None
    order = np.concatenate([np.flatnonzero(pairs.folds == fold) for fold in folds])
    scores = np.concatenate([runs[str(fold)]["scores"] for fold in folds])
    return scores_protocol(scores, pairs.is_same[order], pairs.folds[order])


def main():
    args = parse_args()
    started = time.time()
    scores_only = args.merge or args.fuse  # merging and fusing read only the pair labels
    lfw_dir = resolve_lfw_dir(args.lfw_dir, images=args.aligned_dir is None and not scores_only)
    images_dir = lfw_dir / LFW_IMAGES
    pairs = read_pairs(lfw_dir / LFW_PAIRS,
                       None if scores_only else args.aligned_dir or images_dir)
    results = SweepResults(args.results)
    if args.fuse:
        print(fusion_table(args.fuse, [results.member_runs(member) for member in args.fuse], pairs))
        return
    if args.merge:
        added = results.merge(args.merge)
        print(f"{len(added)} runs added from {args.merge}: "
              + ", ".join(f"{name} fold {fold}" for _, name, fold in added))
        write_table(args.results, pairs)
        return
    settings = vars(args)
    todo = results.todo(settings)
    print(f"{len(todo)} of {len(args.configs) * len(args.folds)} runs to do "
          f"(recipe: {results.recipe_key(settings)}; results: {args.results})", flush=True)
    if todo:
        aligned_dir = args.aligned_dir or align_lfw(args.output, images_dir,
                                                    args.landmarks or lfw_landmarks_path())
        lists = prepare_training_lists(args.output, aligned_dir, pairs,
                                       sorted({fold for _, fold in todo}),
                                       args.max_train_images, args.seed,
                                       args.min_images_per_identity)
        device = device_description()
    for position, (name, fold) in enumerate(todo):
        if args.max_minutes is not None and time.time() - started > 60 * args.max_minutes:
            print(f"--max-minutes {args.max_minutes:g} reached: {len(todo) - position} runs "
                  "left; run the same command again to continue", flush=True)
            break
        print(f"== {name}, fold {fold} ==", flush=True)
        scores, seconds, diverged = run_fold(args, name, fold, lists[fold], aligned_dir, pairs)
        if diverged:
            print(f"{name}, fold {fold}: training diverged ({diverged}); recorded as such",
                  flush=True)
        results.record(settings, name, fold, scores, seconds, device, diverged)
    write_table(args.results, pairs)


def write_table(results_path, pairs):
    """The Markdown table of every recipe, beside the results file (and printed)."""
    table = SweepResults(results_path).table(pairs)  # with what other processes recorded
    markdown = os.path.splitext(results_path)[0] + ".md"
    with atomic_path(markdown) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"# LFW identity-disjoint ({os.path.basename(__file__)})\n\n{table}\n")
    print(table)
    print(f"Wrote {os.path.abspath(markdown)} and {os.path.abspath(results_path)}")


if __name__ == "__main__":
    try:
        main()
    except UserInputError as error:
        raise SystemExit(f"Error: {error}") from None
