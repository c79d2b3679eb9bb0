"""LFW verification (View 2, 6,000 pairs) end to end: pairs → embeddings → 10-fold protocol.

The LFW folder holds `pairs.txt` and `lfw-deepfunneled/NAME/NAME_0001.jpg`; it is found from
the argument, then the environment variable `LFW_DIR`, then `~/.keras/datasets/lfw`. Nothing
is downloaded: every path works offline.
"""

import os
import pathlib
import time

import numpy as np

from keras_sphereface.alignment.landmarks import read_landmarks_file
from keras_sphereface.errors import UserInputError
from keras_sphereface.evaluation.extract import (
    extract_embeddings,
    load_embedder,
    load_embeddings_file,
)
from keras_sphereface.evaluation.pairs import read_pairs
from keras_sphereface.evaluation.protocol import DEFAULT_FARS, plot_roc, verification_protocol

DEFAULT_LFW_DIR = pathlib.Path("~/.keras/datasets/lfw")
LFW_IMAGES = "lfw-deepfunneled"
LFW_PAIRS = "pairs.txt"

LFW_LAYOUT = (
    "an LFW folder laid out as\n"
    "  LFW_DIR/pairs.txt                                  (View 2 pair list, header '10 300')\n"
    "  LFW_DIR/lfw-deepfunneled/NAME/NAME_0001.jpg        (the 13,233 deep-funneled images)\n"
    "given with --lfw-dir DIR or the environment variable LFW_DIR "
    f"(default {DEFAULT_LFW_DIR}); pairs.txt and lfw-deepfunneled.tgz are published on the "
    "LFW page of UMass Amherst (vis-www.cs.umass.edu/lfw)"
)


def resolve_lfw_dir(lfw_dir=None, images=True):
    """The LFW folder: `lfw_dir`, else `$LFW_DIR`, else ~/.keras/datasets/lfw, checked.

    `images=False`: only pairs.txt must be there (the faces come from elsewhere, such as
    crops aligned earlier)."""
    source = "argument"
    if lfw_dir is None and os.environ.get("LFW_DIR"):
        lfw_dir, source = os.environ["LFW_DIR"], "LFW_DIR"
    if lfw_dir is None:
        lfw_dir, source = DEFAULT_LFW_DIR, "default"
    path = pathlib.Path(lfw_dir).expanduser()
    needed = (LFW_PAIRS, LFW_IMAGES) if images else (LFW_PAIRS,)
    missing = [name for name in needed if not (path / name).exists()]
    if missing:
        raise UserInputError(
            f"Expected {LFW_LAYOUT}. Received: {path} ({source}), which lacks "
            f"{' and '.join(missing)}"
        )
    return path


def default_lfw_landmarks():
    """The LFW landmarks file shipped with the package, or None if this install has none."""
    from keras_sphereface import alignment

    finder = getattr(alignment, "lfw_landmarks_path", None)
    if finder is None:
        return None
    path = finder()
    return path if path and os.path.isfile(path) else None


def _landmarks_for(relpaths, landmarks):
    """Index landmarks by relative path, also matching keys that carry a leading folder."""
    by_tail = {"/".join(pathlib.PurePath(k).parts[-2:]): v for k, v in landmarks.items()}
    found = {}
    for relpath in relpaths:
        points = landmarks.get(relpath)
        if points is None:
            points = by_tail.get("/".join(pathlib.PurePath(relpath).parts[-2:]))
        if points is not None:
            found[relpath] = points
    if not found:
        raise UserInputError(
            f"Expected landmarks for the pair list's images (keys like {relpaths[0]!r}). "
            f"Received: a landmarks file with none of them (keys like {next(iter(landmarks))!r})"
        )
    return found


def _model_fingerprint(model):
    """Absolute path and modification time of a model file (so a retrained model is noticed)."""
    if not isinstance(model, (str, os.PathLike)):
        return type(model).__name__
    path = os.path.abspath(model)
    checkpoint = os.path.join(path, "checkpoint.keras")
    stamp = os.path.getmtime(checkpoint if os.path.isfile(checkpoint) else path)
    return f"{path}@{stamp:.0f}"


def _pair_features(pairs, embeddings, source, pairs_path):
    for number, first, second in zip(pairs.line_numbers, pairs.left, pairs.right):
        for relpath in (first, second):
            if relpath not in embeddings:
                raise UserInputError(
                    f"{pairs_path}, line {number}: expected an embedding for {relpath!r} in "
                    f"{source}. Received: no such key ({len(embeddings)} keys)"
                )
    dims = {v.shape for v in embeddings.values()}
    if len(dims) != 1:
        raise UserInputError(
            f"Expected embeddings of one length in {source}. Received: shapes {sorted(dims)}"
        )
    left = np.stack([embeddings[p] for p in pairs.left])
    right = np.stack([embeddings[p] for p in pairs.right])
    return left, right


def _model_embeddings(
    model, pairs, images_dir, landmarks, aligned, is_lfw, flip, fusion, batch_size, cache,
    progress,
):
    """Align and embed every image of `pairs` → (embeddings, extraction info, settings)."""
    if aligned and landmarks is not None:
        raise UserInputError(
            "Expected either pre-aligned crops or a landmarks file, not both. "
            f"Received: aligned=True and landmarks={landmarks!r}"
        )
    if landmarks is None and is_lfw and not aligned:
        landmarks = default_lfw_landmarks()
        if landmarks is None:
            raise UserInputError(
                "Expected a landmarks file for the 250x250 deep-funneled LFW images "
                "(--landmarks FILE, one line 'NAME/NAME_0001.jpg x1 y1 ... x5 y5' per image, "
                "e.g. from the align command), or aligned crops of the model's input size "
                "(--aligned). Received: neither, and this install ships no LFW landmarks"
            )
    landmarks_source = landmarks if isinstance(landmarks, (str, os.PathLike)) else None
    if landmarks_source is not None:
        landmarks = read_landmarks_file(landmarks_source)
    if landmarks is not None:
        landmarks = _landmarks_for(pairs.image_paths, landmarks)
    model_source = (
        model
        if isinstance(model, (str, os.PathLike))
        else getattr(model, "name", type(model).__name__)
    )
    embedder = load_embedder(model)
    settings = {
        "model": os.fspath(model_source),
        "landmarks": os.fspath(landmarks_source) if landmarks_source else None,
        "aligned": landmarks is None,
        "flip": bool(flip),
        "fusion": fusion if flip else None,
        "input_size": list(embedder.input_size),
    }
    embeddings, extraction = extract_embeddings(
        embedder,
        pairs.image_paths,
        images_dir,
        landmarks=landmarks,
        flip=flip,
        fusion=fusion,
        batch_size=batch_size,
        cache_path=cache,
        cache_settings={"model": _model_fingerprint(model), "landmarks": settings["landmarks"]},
        progress=progress,
    )
    return embeddings, extraction, settings


def evaluate_lfw(
    model=None,
    embeddings=None,
    lfw_dir=None,
    pairs_path=None,
    images_dir=None,
    landmarks=None,
    aligned=False,
    flip=True,
    fusion="concat",
    mean_subtraction=True,
    batch_size=64,
    cache=None,
    roc_path=None,
    progress=True,
    fars=DEFAULT_FARS,
):
    """Score a model (or precomputed embeddings) on LFW View 2 or another pair list.

    Args:
        model: a path accepted by `load_embedder` (.keras, run dir, SavedModel, .tflite) or
            an embedder object. Exactly one of `model` and `embeddings`.
        embeddings: an `.npz` path (or a dict) {relative image path: vector}.
        lfw_dir: the LFW folder (see `resolve_lfw_dir`); ignored with `pairs_path`.
        pairs_path, images_dir: another pair list in the LFW format and its images folder.
        landmarks: a landmarks file (or {relative path: (5, 2)}) to align with; for LFW the
            package's shipped file by default. `aligned=True`: images are already crops of
            the model's input size.
        flip, fusion: embed the mirror too and "concat" or "sum" the two vectors.
        mean_subtraction: subtract the 9 training folds' mean feature (SphereFace code).
        cache: an `.npz` embeddings cache, resumed if present.
        roc_path: write the ROC curve there as a PNG.

    Returns:
        A JSON-ready dict with accuracy_mean, accuracy_std, fold_accuracies, thresholds,
        auc, eer, tar_at_far, pair counts and the settings used.
    """
    started = time.perf_counter()
    if (model is None) == (embeddings is None):
        raise UserInputError(
            "Expected exactly one of a model and an embeddings file. "
            f"Received: model={model!r}, embeddings={embeddings!r}"
        )
    is_lfw = pairs_path is None
    if is_lfw:
        root = resolve_lfw_dir(lfw_dir)
        pairs_path, images_dir = root / LFW_PAIRS, root / LFW_IMAGES
    elif images_dir is None and model is not None:
        raise UserInputError(
            f"Expected an images folder for the pair list {pairs_path}. Received: none"
        )
    pairs = read_pairs(pairs_path, images_dir if model is not None else None)
    report_settings = {
        "pairs_file": os.fspath(pairs_path),
        "images_dir": os.fspath(images_dir) if images_dir is not None else None,
        "mean_subtraction": bool(mean_subtraction),
    }

    if embeddings is not None:
        source = embeddings if isinstance(embeddings, (str, os.PathLike)) else "embeddings"
        if isinstance(embeddings, (str, os.PathLike)):
            embeddings, _ = load_embeddings_file(embeddings)
        embeddings = {k: np.asarray(v, np.float32).reshape(-1) for k, v in embeddings.items()}
        report_settings.update(embeddings=os.fspath(source))
        extraction = None
    else:
        embeddings, extraction, model_settings = _model_embeddings(
            model, pairs, images_dir, landmarks, aligned, is_lfw, flip, fusion, batch_size,
            cache, progress,
        )
        report_settings.update(model_settings)
        source = "the extracted embeddings"

    left, right = _pair_features(pairs, embeddings, source, pairs_path)
    report, scores = verification_protocol(
        left, right, pairs.is_same, pairs.folds, mean_subtraction=mean_subtraction, fars=fars
    )
    if roc_path is not None:
        label = report_settings.get("model") or report_settings.get("embeddings")
        plot_roc(scores, pairs.is_same, roc_path, label=pathlib.Path(label).name)
    report.update(settings=report_settings, embedding_dim=int(left.shape[1]))
    if extraction is not None:
        report["extraction"] = extraction
    report["wall_seconds"] = time.perf_counter() - started
    return report
