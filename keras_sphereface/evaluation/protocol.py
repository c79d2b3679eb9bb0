"""The 10-fold verification protocol of LFW View 2, ROC, AUC, EER and TAR at FAR.

For each fold k (Huang et al., UMass TR 07-49; SphereFace evaluation code, Liu et al. 2017):

1. optionally subtract the mean feature μ of the other folds' images (both sides of every
   pair), as the original SphereFace code does;
2. L2-normalize and score each pair by cosine similarity s = x̂·ŷ;
3. choose the threshold t maximizing accuracy of "same ⇔ s > t" on the other folds;
4. report the accuracy of t on fold k.

The result is mean ± standard deviation (population, ddof=0, as the original code) over the
folds. ROC, AUC, EER and TAR@FAR are computed on the held-out ("out-of-fold") scores, so each
score comes from the same feature transform used for its fold's accuracy.

Pure NumPy: runs with any Keras backend, and without one.
"""

import math

import numpy as np

from keras_sphereface.atomic import atomic_path

DEFAULT_FARS = (1e-3, 1e-4)


def l2_normalize(features, epsilon=1e-12):
    """x / max(‖x‖, ε) row by row (a zero row stays zero)."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, epsilon)


def cosine_scores(left, right):
    """cos θ between corresponding rows of `left` and `right` [N, D] → [N]."""
    return np.sum(l2_normalize(left) * l2_normalize(right), axis=-1)


def best_threshold(scores, is_same):
    """The threshold t maximizing the accuracy of "same ⇔ score > t"; returns (t, accuracy).

    Candidates are the midpoints between consecutive distinct scores plus one below the
    smallest and one above the largest, so every distinct split of the sorted scores is
    tried exactly (no grid). Ties go to the lowest threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    distinct, inverse = np.unique(scores, return_inverse=True)
    positives_at = np.bincount(inverse, weights=is_same, minlength=len(distinct))
    negatives_at = np.bincount(inverse, weights=~is_same, minlength=len(distinct))
    # Split after position k (k = -1 .. len-1): scores <= distinct[k] are called "different".
    negatives_below = np.concatenate([[0.0], np.cumsum(negatives_at)])
    positives_below = np.concatenate([[0.0], np.cumsum(positives_at)])
    correct = negatives_below + (is_same.sum() - positives_below)
    best = int(np.argmax(correct))
    if best == 0:
        threshold = distinct[0] - 1.0
    elif best == len(distinct):
        threshold = distinct[-1] + 1.0
    else:
        threshold = 0.5 * (distinct[best - 1] + distinct[best])
    return float(threshold), float(correct[best] / len(scores))


def roc_curve(scores, is_same):
    """(fpr, tpr, thresholds) of "same ⇔ score >= threshold", one point per distinct score.

    Starts at (0, 0) with threshold +inf; fpr and tpr are non-decreasing.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_same = scores[order], is_same[order]
    # The last index of each run of equal scores: a threshold there accepts the whole run.
    last_of_run = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    true_accepts = np.cumsum(sorted_same)[last_of_run]
    false_accepts = np.cumsum(~sorted_same)[last_of_run]
    num_positive, num_negative = max(is_same.sum(), 1), max((~is_same).sum(), 1)
    fpr = np.r_[0.0, false_accepts / num_negative]
    tpr = np.r_[0.0, true_accepts / num_positive]
    thresholds = np.r_[np.inf, sorted_scores[last_of_run]]
    return fpr, tpr, thresholds


def auc(fpr, tpr):
    """Area under the ROC by the trapezoidal rule."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def equal_error_rate(fpr, tpr):
    """The rate where FPR = FNR = 1 − TPR, linearly interpolated between ROC points."""
    gap = (1.0 - tpr) - fpr  # decreases from 1 to -1 along the curve
    crossing = int(np.argmax(gap <= 0.0))
    if crossing == 0:
        return float(fpr[0])
    before, after = gap[crossing - 1], gap[crossing]
    weight = before / (before - after)
    return float(fpr[crossing - 1] + weight * (fpr[crossing] - fpr[crossing - 1]))


def tar_at_far(fpr, tpr, thresholds, far, num_negative):
    """The best TAR whose FAR does not exceed `far`, with what limits its resolution.

    With N negative pairs the FAR moves in steps of 1/N: FAR ≤ `far` allows
    floor(far·N) false accepts, so for far < 1/N the figure is the TAR at zero false accepts.
    """
    allowed = fpr <= far + 1e-12
    index = int(np.nonzero(allowed)[0][-1])
    return {
        "far": far,
        "tar": float(tpr[index]),
        "threshold": float(thresholds[index]),
        "far_achieved": float(fpr[index]),
        "negative_pairs": int(num_negative),
        "false_accepts_allowed": int(math.floor(far * num_negative + 1e-9)),
        "far_resolution": 1.0 / num_negative if num_negative else None,
    }


def _fold_scores(left, right, train, mean_subtraction):
    if mean_subtraction:
        mean = np.concatenate([left[train], right[train]]).mean(axis=0)
        return cosine_scores(left - mean, right - mean)
    return cosine_scores(left, right)


def verification_protocol(left, right, is_same, folds, mean_subtraction=True, fars=DEFAULT_FARS):
    """Run the k-fold protocol on pair features `left`, `right` [N, D].

    Returns (report, scores): `report` a JSON-ready dict with accuracy_mean, accuracy_std,
    fold_accuracies, thresholds, auc, eer, tar_at_far and pair counts; `scores` the
    out-of-fold cosine scores [N] (for a ROC plot).
    """
    left = np.asarray(left, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    if left.shape != right.shape or left.ndim != 2 or len(left) != len(is_same):
        raise ValueError(
            f"Expected left and right features of the same shape [N, D] with N = "
            f"{len(is_same)} pairs. Received: {left.shape} and {right.shape}"
        )
    report, scores = _cross_validated(
        lambda train: _fold_scores(left, right, train, mean_subtraction), is_same, folds, fars
    )
    report["mean_subtraction"] = bool(mean_subtraction)
    return report, scores


def scores_protocol(scores, is_same, folds, fars=DEFAULT_FARS):
    """The k-fold protocol on fixed pair scores [N] (steps 3 and 4 above): for scores that
    do not depend on the training folds, e.g. each fold scored by its own model.

    Returns the report of `verification_protocol` (mean_subtraction False).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(is_same),):
        raise ValueError(
            f"Expected one score per pair, shape ({len(is_same)},). Received: {scores.shape}"
        )
    report, _ = _cross_validated(lambda train: scores, is_same, folds, fars)
    report["mean_subtraction"] = False
    return report


def _cross_validated(fold_scores_of, is_same, folds, fars):
    """Per fold: scores from `fold_scores_of(train mask)`, the best threshold on the other
    folds, the accuracy on this one; then ROC figures on the held-out scores."""
    is_same = np.asarray(is_same, dtype=bool)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"Expected at least 2 folds. Received: {fold_ids.tolist()}")
    scores = np.empty(len(is_same), dtype=np.float64)
    accuracies, thresholds = [], []
    for fold in fold_ids:
        test = folds == fold
        train = ~test
        fold_scores = fold_scores_of(train)
        threshold, _ = best_threshold(fold_scores[train], is_same[train])
        accuracies.append(float(np.mean((fold_scores[test] > threshold) == is_same[test])))
        thresholds.append(threshold)
        scores[test] = fold_scores[test]

    fpr, tpr, roc_thresholds = roc_curve(scores, is_same)
    num_negative = int((~is_same).sum())
    report = {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "thresholds": thresholds,
        "auc": auc(fpr, tpr),
        "eer": equal_error_rate(fpr, tpr),
        "tar_at_far": {
            f"{far:.0e}": tar_at_far(fpr, tpr, roc_thresholds, far, num_negative) for far in fars
        },
        "num_pairs": int(len(is_same)),
        "num_matched": int(is_same.sum()),
        "num_mismatched": num_negative,
        "num_folds": int(len(fold_ids)),
    }
    return report, scores


def plot_roc(scores, is_same, path, label=None, fars=DEFAULT_FARS):
    """Write the ROC (TPR against FPR on a log axis) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fpr, tpr, thresholds = roc_curve(scores, is_same)
    num_negative = int((~np.asarray(is_same, dtype=bool)).sum())
    floor = 1.0 / max(num_negative, 1)
    left_edge = min([floor, *fars]) / 2
    figure, axes = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    area = auc(fpr, tpr)
    curve_label = f"{label or 'model'} (AUC {area:.4f})"
    axes.step(np.maximum(fpr, left_edge), tpr, where="post", label=curve_label)
    for far in fars:
        point = tar_at_far(fpr, tpr, thresholds, far, num_negative)
        axes.plot([far], [point["tar"]], "o", label=f"TAR {point['tar']:.3f} @ FAR {far:.0e}")
    axes.axvline(floor, color="grey", linestyle=":", label=f"1 / {num_negative} negatives")
    axes.set_xscale("log")
    axes.set_xlim(left_edge, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false accept rate")
    axes.set_ylabel("true accept rate")
    axes.set_title("Verification ROC")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
