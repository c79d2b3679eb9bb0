"""The 10-fold protocol, ROC, AUC, EER and TAR@FAR against independent computations."""

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics

from keras_sphereface.evaluation.protocol import (
    auc,
    best_threshold,
    equal_error_rate,
    roc_curve,
    scores_protocol,
    tar_at_far,
    verification_protocol,
)


def _brute_force_threshold(scores, is_same):
    """Try every midpoint of sorted distinct scores and both extremes; lowest best wins."""
    distinct = sorted(set(float(s) for s in scores))
    candidates = [distinct[0] - 1.0]
    candidates += [(a + b) / 2 for a, b in zip(distinct[:-1], distinct[1:])]
    candidates += [distinct[-1] + 1.0]
    best, best_accuracy = None, -1.0
    for t in candidates:
        accuracy = np.mean([(s > t) == y for s, y in zip(scores, is_same)])
        if accuracy > best_accuracy:
            best, best_accuracy = t, accuracy
    return best, best_accuracy


def _balanced_folds(num_folds, per_fold):
    is_same = np.tile(np.r_[np.ones(per_fold, bool), np.zeros(per_fold, bool)], num_folds)
    folds = np.repeat(np.arange(num_folds), 2 * per_fold)
    return is_same, folds


def test_threshold_on_hand_made_example():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    is_same = [False, False, True, False, True, True]
    # By hand: cutting between 0.2|0.3 or 0.4|0.5 both give 5/6; the lower cut wins.
    threshold, accuracy = best_threshold(scores, is_same)
    assert threshold == pytest.approx(0.25)
    assert accuracy == pytest.approx(5 / 6)


def test_threshold_extremes():
    # All pairs the same person: every score must be accepted.
    threshold, accuracy = best_threshold([0.3, 0.5], [True, True])
    assert threshold < 0.3 and accuracy == 1.0
    threshold, accuracy = best_threshold([0.3, 0.5], [False, False])
    assert threshold >= 0.5 and accuracy == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    is_same = rng.random(80) < 0.5
    scores = np.round(rng.normal(size=80) + is_same, 1)  # many ties
    expected_threshold, expected_accuracy = _brute_force_threshold(scores, is_same)
    threshold, accuracy = best_threshold(scores, is_same)
    assert threshold == pytest.approx(expected_threshold)
    assert accuracy == pytest.approx(expected_accuracy)


def test_separable_embeddings_give_100_percent():
    rng = np.random.default_rng(0)
    is_same, folds = _balanced_folds(10, 30)
    left = rng.normal(size=(len(is_same), 64))
    right = np.where(is_same[:, None], left + 0.01 * rng.normal(size=left.shape), -left)
    for mean_subtraction in (True, False):
        report, _ = verification_protocol(left, right, is_same, folds, mean_subtraction)
        assert report["fold_accuracies"] == [1.0] * 10
        assert report["accuracy_mean"] == 1.0 and report["accuracy_std"] == 0.0
        assert report["auc"] == pytest.approx(1.0)
        assert report["eer"] == pytest.approx(0.0)


@pytest.mark.parametrize("mean_subtraction", [True, False])
def test_constant_embeddings_give_50_percent(mean_subtraction):
    is_same, folds = _balanced_folds(10, 30)
    left = right = np.ones((len(is_same), 8))
    report, _ = verification_protocol(left, right, is_same, folds, mean_subtraction)
    assert report["fold_accuracies"] == [0.5] * 10
    assert report["accuracy_mean"] == 0.5
    assert report["auc"] == pytest.approx(0.5)


def test_fold_thresholds_and_accuracies_follow_the_protocol():
    rng = np.random.default_rng(3)
    is_same, folds = _balanced_folds(4, 10)
    left = rng.normal(size=(len(is_same), 6)) + 0.5
    right = np.where(is_same[:, None], left, 0) + rng.normal(size=left.shape)
    report, scores = verification_protocol(left, right, is_same, folds, mean_subtraction=True)
    for fold in range(4):
        train, test = folds != fold, folds == fold
        mean = np.vstack([left[train], right[train]]).mean(axis=0)
        a, b = left - mean, right - mean
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        threshold, _ = _brute_force_threshold(cosine[train], is_same[train])
        assert report["thresholds"][fold] == pytest.approx(threshold)
        expected = np.mean((cosine[test] > threshold) == is_same[test])
        assert report["fold_accuracies"][fold] == pytest.approx(expected)
        np.testing.assert_allclose(scores[test], cosine[test])
    assert report["accuracy_std"] == pytest.approx(np.std(report["fold_accuracies"]))


def test_scores_protocol_picks_each_threshold_on_the_other_folds():
    rng = np.random.default_rng(5)
    is_same, folds = _balanced_folds(5, 12)
    scores = rng.normal(size=len(is_same)) + 1.2 * is_same  # e.g. each fold from its own model
    report = scores_protocol(scores, is_same, folds)
    for fold in range(5):
        train, test = folds != fold, folds == fold
        threshold, _ = _brute_force_threshold(scores[train], is_same[train])
        assert report["thresholds"][fold] == pytest.approx(threshold)
        expected = np.mean((scores[test] > threshold) == is_same[test])
        assert report["fold_accuracies"][fold] == pytest.approx(expected)
    assert report["accuracy_mean"] == pytest.approx(np.mean(report["fold_accuracies"]))
    assert report["auc"] == pytest.approx(metrics.roc_auc_score(is_same, scores))
    with pytest.raises(ValueError, match=r"one score per pair, shape \(120,\)"):
        scores_protocol(scores[:-1], is_same, folds)


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_and_auc_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    is_same = rng.random(500) < 0.4
    scores = np.round(rng.normal(size=500) + 1.2 * is_same, 2)
    fpr, tpr, thresholds = roc_curve(scores, is_same)
    sk_fpr, sk_tpr, sk_thresholds = metrics.roc_curve(is_same, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert auc(fpr, tpr) == pytest.approx(metrics.roc_auc_score(is_same, scores), abs=1e-12)


def test_eer_matches_interpolated_crossing():
    rng = np.random.default_rng(5)
    is_same = rng.random(2000) < 0.5
    scores = rng.normal(size=2000) + 1.5 * is_same
    fpr, tpr, _ = metrics.roc_curve(is_same, scores, drop_intermediate=False)
    expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    ours_fpr, ours_tpr, _ = roc_curve(scores, is_same)
    assert equal_error_rate(ours_fpr, ours_tpr) == pytest.approx(expected, abs=1e-9)


def test_tar_at_far_matches_brute_force():
    rng = np.random.default_rng(7)
    is_same = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    scores = rng.normal(size=2000) + 2.0 * is_same
    fpr, tpr, thresholds = roc_curve(scores, is_same)
    positives, negatives = scores[is_same], scores[~is_same]
    for far in (1e-1, 1e-2, 1e-3, 1e-4):
        best = 0.0
        for t in scores:
            if np.mean(negatives >= t) <= far:
                best = max(best, np.mean(positives >= t))
        entry = tar_at_far(fpr, tpr, thresholds, far, num_negative=1000)
        assert entry["tar"] == pytest.approx(best)
        assert entry["far_achieved"] <= far
        assert entry["false_accepts_allowed"] == int(np.floor(far * 1000 + 1e-9))
        assert entry["negative_pairs"] == 1000
