"""examples/lfw_identity_disjoint.py: the results file the sweep accumulates its scores in."""

import json
import types

import numpy as np
import pytest

from keras_sphereface import UserInputError

SETTINGS = {"backbone": "sphere10", "width_multiplier": 0.25, "embedding_dim": 128, "epochs": 20,
            "batch_size": 64, "learning_rate": 0.04, "mixed_precision": None,
            "max_train_images": None, "seed": 0, "weight_normalization": "reparametrized",
            "warmup_epochs": None, "folds": [0, 2], "output": "ignored"}


@pytest.fixture(scope="module")
def sweep(load_example):
    return load_example("lfw_identity_disjoint")


def _pairs(num_folds=3, per_fold=20, seed=0):
    rng = np.random.default_rng(seed)
    folds = np.repeat(np.arange(num_folds), per_fold)
    is_same = np.tile(np.arange(per_fold) < per_fold // 2, num_folds)
    scores = rng.normal(size=len(folds)) + 1.5 * is_same
    return types.SimpleNamespace(folds=folds, is_same=is_same), scores


def _best_midpoint(scores, is_same):
    """The best midpoint threshold on these scores (lowest on ties) and its accuracy."""
    candidates = np.sort(scores)
    candidates = np.r_[candidates[0] - 1, (candidates[1:] + candidates[:-1]) / 2]
    correct = [np.mean((scores > t) == is_same) for t in candidates]
    best = int(np.argmax(correct))
    return candidates[best], correct[best]


def _protocol_accuracy(scores, is_same, folds, done):
    """Mean accuracy over `done`, each fold's threshold the best midpoint on the others."""
    accuracies = []
    for fold in done:
        train = np.isin(folds, done) & (folds != fold)
        threshold, _ = _best_midpoint(scores[train], is_same[train])
        test = folds == fold
        accuracies.append(np.mean((scores[test] > threshold) == is_same[test]))
    return np.mean(accuracies)


def test_scores_accumulate_per_recipe_and_give_the_protocol_table(sweep, tmp_path):
    pairs, scores = _pairs()
    path = tmp_path / "results" / "sweep.json"
    results = sweep.SweepResults(str(path))
    for fold in (0, 2):
        results.record(SETTINGS, "a-softmax", fold, scores[pairs.folds == fold], 60.0 * (fold + 1),
                       "tensorflow on CPU")
    other_recipe = dict(SETTINGS, epochs=30)  # another process, started before those records
    other = sweep.SweepResults(str(path))
    other.data = {"recipes": {}}  # what it read then
    other.record(other_recipe, "a-softmax", 1, scores[pairs.folds == 1], 30.0, "jax on H200")

    reloaded = sweep.SweepResults(str(path))  # what the next session finds
    assert sorted(reloaded.runs(SETTINGS)["a-softmax"]) == ["0", "2"]
    assert sorted(reloaded.runs(dict(SETTINGS, folds=[5], output="x"))["a-softmax"]) == ["0", "2"]
    assert sorted(reloaded.runs(other_recipe)["a-softmax"]) == ["1"]
    table = reloaded.table(pairs)
    expected = _protocol_accuracy(scores, pairs.is_same, pairs.folds, [0, 2])
    row = next(line for line in table.splitlines() if "2/10 (0,2)" in line)
    assert f"| {100 * expected:.2f} ± " in row and "| 2.0 min |" in row
    # one fold: no other fold to choose its threshold on; the fold's own best threshold
    _, fold_one = _best_midpoint(scores[pairs.folds == 1], pairs.is_same[pairs.folds == 1])
    row = next(line for line in table.splitlines() if "1/10 (1)" in line)
    assert f"| {100 * fold_one:.2f} % (threshold chosen on the fold itself: optimistic) |" in row
    assert "1/10 (1) | – |" in row  # and no AUC of the protocol


def test_a_damaged_results_file_is_named(sweep, tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text('{"recipes": {')
    with pytest.raises(UserInputError, match="sweep.json to be a results file"):
        sweep.SweepResults(str(path))


def test_todo_skips_recorded_runs_fold_by_fold(sweep, tmp_path):
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    results.record(SETTINGS, "a-softmax", 0, np.zeros(600), 1.0, "cpu")
    settings = dict(SETTINGS, configs=["a-softmax", "softmax"], folds=[0, 1])
    assert results.todo(settings) == [("softmax", 0), ("a-softmax", 1), ("softmax", 1)]


def test_a_run_dir_of_another_recipe_is_not_resumed(sweep, tmp_path):
    options = {"backbone": "sphere10", "epochs": 20, "seed": 0,
               "weight_normalization": "reparametrized"}
    config = dict(options, data="train.txt", steps_per_epoch=188)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    sweep.check_run_recipe(str(tmp_path), options)  # the same recipe: resumed
    path.write_text(json.dumps(dict(config, weight_normalization="projected")))
    with pytest.raises(UserInputError, match="weight_normalization='reparametrized'.*Received: "
                                             "weight_normalization='projected'"):
        sweep.check_run_recipe(str(tmp_path), options)
