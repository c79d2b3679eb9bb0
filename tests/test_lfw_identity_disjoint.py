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


def test_a_setting_added_later_keys_a_recipe_only_when_set(sweep, tmp_path):
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    flips_only = results.recipe_key(dict(SETTINGS, jitter=0.0))
    assert flips_only == results.recipe_key(SETTINGS)  # the key recorded before jitter existed
    assert "jitter" not in flips_only
    jittered = dict(SETTINGS, jitter=0.1)
    assert results.recipe_key(jittered) == flips_only + ", jitter=0.1"
    results.record(jittered, "a-softmax", 0, np.zeros(600), 1.0, "cpu")
    assert results.runs(jittered)["a-softmax"] and not results.runs(SETTINGS)
    assert results.data["recipes"][results.recipe_key(jittered)]["settings"]["jitter"] == 0.1
    assert results.recipe_key(dict(SETTINGS, weight_decay=5e-4)) == flips_only
    assert results.recipe_key(dict(jittered, weight_decay=2e-3)) == (
        flips_only + ", jitter=0.1, weight_decay=0.002"
    )
    assert results.recipe_key(dict(SETTINGS, min_images_per_identity=1)) == flips_only
    assert results.recipe_key(dict(jittered, min_images_per_identity=2)) == (
        flips_only + ", jitter=0.1, min_images_per_identity=2"
    )
    assert results.recipe_key(dict(SETTINGS, batch_norm=False)) == flips_only
    assert results.recipe_key(dict(jittered, batch_norm=True)) == (
        flips_only + ", jitter=0.1, batch_norm=True"
    )


def test_a_results_file_of_another_pair_list_is_refused(sweep, tmp_path):
    pairs, scores = _pairs(per_fold=20)
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    results.record(SETTINGS, "softmax", 1, np.zeros(600), 1.0, "cpu")  # LFW's 600 a fold
    with pytest.raises(UserInputError, match=r"sweep.json to score the 20 pairs of fold 1 of "
                                             r"this pair list. Received: 600 scores for softmax"):
        results.table(pairs)


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
    # a run dir older than a setting (its config.json lacks it) had that setting's default
    path.write_text(json.dumps(config))
    sweep.check_run_recipe(str(tmp_path), dict(options, batch_norm=False))
    with pytest.raises(UserInputError, match="batch_norm=True.*Received: batch_norm=False"):
        sweep.check_run_recipe(str(tmp_path), dict(options, batch_norm=True))


def test_merge_adds_only_the_runs_this_file_lacks(sweep, tmp_path):
    here = sweep.SweepResults(str(tmp_path / "here.json"))
    here.record(SETTINGS, "softmax", 0, np.full(600, 0.25), 600.0, "tensorflow on CPU")
    there = sweep.SweepResults(str(tmp_path / "there.json"))  # the GPU machine's copy
    there.record(SETTINGS, "softmax", 0, np.full(600, 0.75), 60.0, "jax on H200")
    there.record(SETTINGS, "softmax", 1, np.full(600, 0.5), 60.0, "jax on H200")
    gpu_recipe = dict(SETTINGS, backbone="sphere20")
    there.record(gpu_recipe, "arcface", 3, np.full(600, 0.1), 70.0, "jax on H200")

    added = here.merge(str(tmp_path / "there.json"))
    assert sorted((name, fold) for _, name, fold in added) == [("arcface", 3), ("softmax", 1)]
    reloaded = sweep.SweepResults(str(tmp_path / "here.json"))
    runs = reloaded.runs(SETTINGS)["softmax"]
    assert runs["0"]["scores"][0] == 0.25 and runs["0"]["device"] == "tensorflow on CPU"
    assert runs["1"]["scores"][0] == 0.5
    assert reloaded.runs(gpu_recipe)["arcface"]["3"]["train_seconds"] == 70.0
    assert here.merge(str(tmp_path / "there.json")) == []  # merging twice adds nothing
    with pytest.raises(UserInputError, match="results file to merge. Received: .*missing.json"):
        here.merge(str(tmp_path / "missing.json"))


def test_merge_needs_only_pairs_txt(sweep, tmp_path, monkeypatch, capsys):
    """Merging back a GPU machine's results needs the pair labels, not the LFW images."""
    lfw = tmp_path / "lfw"  # pairs.txt only: 2 folds of 1 matched + 1 mismatched pair
    lfw.mkdir()
    (lfw / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 Bob 1\nCid 1 2\nCid 1 Dan 1\n")
    there = sweep.SweepResults(str(tmp_path / "there.json"))
    for fold in (0, 1):
        there.record(SETTINGS, "arcface", fold, np.array([0.9, 0.1]), 60.0, "jax on H200")
    here = tmp_path / "here.json"
    monkeypatch.setattr("sys.argv", ["x", "--lfw-dir", str(lfw), "--results", str(here),
                                     "--merge", str(tmp_path / "there.json")])
    sweep.main()
    assert "2 runs added" in capsys.readouterr().out
    runs = sweep.SweepResults(str(here)).runs(SETTINGS)["arcface"]
    assert sorted(runs) == ["0", "1"]
    assert "| arcface |" in (tmp_path / "here.md").read_text()


def test_training_lists_read_crops_aligned_elsewhere(sweep, tmp_path):
    aligned = tmp_path / "pack" / "aligned_112x96"
    for name, count in (("Ann_A", 2), ("Bob_B", 1), ("Cid_C", 3)):
        (aligned / name).mkdir(parents=True)
        for number in range(1, count + 1):
            (aligned / name / f"{name}_{number:04d}.jpg").write_bytes(b"\xff\xd8\xff")
    pairs = types.SimpleNamespace(left=["Bob_B/Bob_B_0001.jpg"], right=["Ann_A/Ann_A_0002.jpg"],
                                  folds=np.array([0]))
    output = tmp_path / "runs"
    lists = sweep.prepare_training_lists(str(output), str(aligned), pairs, [0], None, 0)
    lines = open(lists[0]).read().splitlines()
    assert lines[0] == "# LFW crops of the 1 identities absent from fold 0"
    assert lines[1:] == [f"../pack/aligned_112x96/Cid_C/Cid_C_000{n}.jpg 0" for n in (1, 2, 3)]
    assert all((output / line.split()[0]).is_file() for line in lines[1:])


def test_training_lists_can_leave_out_identities_with_few_images(sweep, tmp_path):
    aligned = tmp_path / "aligned_112x96"
    counts = {"Ann_A": 2, "Bob_B": 1, "Cid_C": 3, "Dee_D": 1, "Eve_E": 4}
    for name, count in counts.items():
        (aligned / name).mkdir(parents=True)
        for number in range(1, count + 1):
            (aligned / name / f"{name}_{number:04d}.jpg").write_bytes(b"\xff\xd8\xff")
    pairs = types.SimpleNamespace(left=["Cid_C/Cid_C_0001.jpg"], right=["Dee_D/Dee_D_0001.jpg"],
                                  folds=np.array([0]))
    for min_images in (1, 2, 3):
        lists = sweep.prepare_training_lists(str(tmp_path / f"min{min_images}"), str(aligned),
                                             pairs, [0], None, 0, min_images)
        rows = [line.split() for line in open(lists[0]).read().splitlines()[1:]]
        expected = sorted(name for name, count in counts.items()
                          if count >= min_images and name not in ("Cid_C", "Dee_D"))
        kept = sorted({path.split("/")[-2] for path, _ in rows})
        assert kept == expected
        assert len(rows) == sum(counts[name] for name in expected)
        labels = {path.split("/")[-2]: int(label) for path, label in rows}
        assert sorted(labels.values()) == list(range(len(expected)))


def test_min_images_per_identity_below_one_is_refused(sweep, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lfw_identity_disjoint.py", "--min-images-per-identity", "0"])
    with pytest.raises(SystemExit):
        sweep.parse_args()
    assert "expected --min-images-per-identity >= 1; received 0" in capsys.readouterr().err


RECORDS_EACH = 25


def _record_runs(path, name):
    """One sweep's records (in a child process: examples/ imported from its file)."""
    import importlib.util
    import pathlib

    file = pathlib.Path(__file__).resolve().parents[1] / "examples" / "lfw_identity_disjoint.py"
    spec = importlib.util.spec_from_file_location("lfw_identity_disjoint", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.SweepResults(path)
    for fold in range(RECORDS_EACH):
        results.record(SETTINGS, name, fold, np.random.default_rng(fold).random(600), 1.0, "cpu")


def test_sweeps_sharing_a_results_file_lose_no_run(sweep, tmp_path):
    """bench/device_lfw_sweep.py --jobs: several sweeps record into one file at once."""
    import multiprocessing

    path = str(tmp_path / "shared.json")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_record_runs, args=(path, name))
               for name in ("softmax", "cosface", "arcface")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)  # three fresh interpreters importing TF on a loaded 2-core machine
        assert worker.exitcode == 0
    runs = sweep.SweepResults(path).runs(SETTINGS)
    assert {name: sorted(map(int, folds)) for name, folds in runs.items()} == {
        name: list(range(RECORDS_EACH)) for name in ("softmax", "cosface", "arcface")}


@pytest.mark.parametrize("argv, expected", [
    (["--configs", "all"], ["softmax", "a-softmax", "cosface", "arcface", "curricularface",
                            "a-softmax-m1", "a-softmax-m2", "a-softmax-m3", "cosface-m0.2",
                            "arcface-m0.3"]),
    (["--configs", "all", "--shard", "1/3"], ["a-softmax", "curricularface", "a-softmax-m3"]),
    (["--configs", "softmax,cosface", "--shard", "0/2"], ["softmax"]),
])
def test_configs_all_and_shards_deal_them_out(sweep, monkeypatch, argv, expected):
    monkeypatch.setattr("sys.argv", ["lfw_identity_disjoint.py", *argv])
    assert sweep.parse_args().configs == expected


@pytest.mark.parametrize("shard, message", [
    ("2/2", "expected --shard I/N with 0 <= I < N; received '2/2'"),
    ("x", "expected --shard I/N"),
    ("2/3", "--shard 2/3 leaves none of the 2 configs softmax,cosface"),
])
def test_a_bad_shard_is_refused_by_value(sweep, monkeypatch, capsys, shard, message):
    monkeypatch.setattr("sys.argv", ["x", "--configs", "softmax,cosface", "--shard", shard])
    with pytest.raises(SystemExit):
        sweep.parse_args()
    assert message in capsys.readouterr().err


def test_a_diverged_run_is_recorded_named_and_left_out_of_the_protocol(sweep, tmp_path):
    """A run whose loss went NaN would diverge again when rerun (same seed and order)."""
    pairs, scores = _pairs()
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    for fold in (0, 2):
        results.record(SETTINGS, "softmax", fold, scores[pairs.folds == fold], 60.0, "cpu")
    results.record(SETTINGS, "softmax", 1, None, 6.0, "cpu", diverged="loss NaN in epoch 1 of 20")
    results.record(SETTINGS, "cosface", 1, None, 6.0, "cpu", diverged="loss NaN in epoch 3 of 20")
    reloaded = sweep.SweepResults(str(tmp_path / "sweep.json"))
    assert reloaded.runs(SETTINGS)["softmax"]["1"]["diverged"] == "loss NaN in epoch 1 of 20"
    settings = dict(SETTINGS, configs=["softmax"], folds=[0, 1, 2])
    assert reloaded.todo(settings) == []  # not retried
    table = reloaded.table(pairs)
    expected = _protocol_accuracy(scores, pairs.is_same, pairs.folds, [0, 2])
    row = next(line for line in table.splitlines() if line.startswith("| softmax |"))
    assert f"| {100 * expected:.2f} ± " in row and "| 2/10 (0,2); diverged on 1 |" in row
    row = next(line for line in table.splitlines() if line.startswith("| cosface |"))
    assert row.startswith("| cosface | – | 0/10 (); diverged on 1 | – |")


def test_configs_are_compared_on_the_folds_all_of_them_scored(sweep, tmp_path):
    pairs, scores = _pairs(num_folds=4)
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    for fold in (0, 1, 2, 3):
        results.record(SETTINGS, "arcface", fold, scores[pairs.folds == fold] + 0.1 * fold, 60.0,
                       "cpu")
    for fold in (0, 1, 3):
        results.record(SETTINGS, "softmax", fold, scores[pairs.folds == fold], 60.0, "cpu")
    results.record(SETTINGS, "softmax", 2, None, 6.0, "cpu", diverged="loss NaN in epoch 1 of 20")
    table = results.table(pairs)
    shifted = scores + 0.1 * pairs.folds
    arcface = _protocol_accuracy(shifted, pairs.is_same, pairs.folds, [0, 1, 3])
    softmax = _protocol_accuracy(scores, pairs.is_same, pairs.folds, [0, 1, 3])
    assert arcface != _protocol_accuracy(shifted, pairs.is_same, pairs.folds, [0, 1, 2, 3])
    line = next(line for line in table.splitlines() if line.startswith("The margin family"))
    assert line.startswith(f"The margin family on the folds all its configs scored (0,1,3): "
                           f"softmax {100 * softmax:.2f} ± ")  # in the comparison's order
    assert f", arcface {100 * arcface:.2f} ± " in line
    assert "ablation" not in table  # its configs: softmax alone
    results.data["recipes"][results.recipe_key(SETTINGS)]["runs"]["arcface"].pop("2")
    assert "on the folds" not in results.table(pairs)  # the same folds: the rows compare


def test_the_margin_family_and_the_ablation_are_compared_each_on_its_own_folds(sweep, tmp_path):
    """A partly done ablation narrows its own comparison, not the margin family's."""
    pairs, scores = _pairs(num_folds=4)
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    shift = {"softmax": 0.0, "a-softmax": 0.3, "cosface": 0.2, "a-softmax-m1": 0.1}
    done = {"softmax": (0, 1, 2, 3), "a-softmax": (0, 1, 2, 3), "cosface": (0, 1, 2),
            "a-softmax-m1": (0, 1)}
    for name, folds in done.items():
        for fold in folds:
            fold_scores = scores[pairs.folds == fold] + shift[name] * (fold + 1)
            results.record(SETTINGS, name, fold, fold_scores, 60.0, "cpu")
    lines = results.table(pairs).splitlines()

    def expected(name, folds):
        shifted = scores + shift[name] * (pairs.folds + 1)
        accuracy = _protocol_accuracy(shifted, pairs.is_same, pairs.folds, folds)
        return f"{name} {100 * accuracy:.2f} ± "

    family = next(line for line in lines if line.startswith("The margin family"))
    assert family.startswith("The margin family on the folds all its configs scored (0,1,2): ")
    for name in ("softmax", "a-softmax", "cosface"):
        assert expected(name, [0, 1, 2]) in family
    assert "a-softmax-m1" not in family
    ablation = next(line for line in lines if line.startswith("The A-Softmax ablation"))
    assert ablation.startswith("The A-Softmax ablation on the folds all its configs scored (0,1): ")
    positions = [ablation.index(expected(name, [0, 1]))
                 for name in ("softmax", "a-softmax-m1", "a-softmax")]
    assert positions == sorted(positions)  # m rising, as COMPARISONS lists them
    assert "cosface" not in ablation


def test_every_config_is_in_a_comparison(sweep):
    assert set(sweep.CONFIGS) == set().union(*sweep.COMPARISONS.values())


def test_fuse_scores_the_mean_of_the_members_on_the_folds_all_scored(sweep, tmp_path):
    pairs, scores = _pairs(num_folds=4)
    other = _pairs(num_folds=4, seed=1)[1]
    results = sweep.SweepResults(str(tmp_path / "sweep.json"))
    longer = dict(SETTINGS, epochs=30)
    for fold in (0, 1, 2, 3):
        results.record(SETTINGS, "arcface", fold, scores[pairs.folds == fold], 60.0, "cpu")
    for fold in (0, 2, 3):  # fold 1 not run for this member
        results.record(longer, "a-softmax", fold, other[pairs.folds == fold], 60.0, "cpu")
    members = ["arcface@epochs=20", "a-softmax@epochs=30"]
    table = sweep.fusion_table(members, [results.member_runs(m) for m in members], pairs)

    done = [0, 2, 3]
    mean = (scores + other) / 2
    for name, expected_scores in [(members[0], scores), (members[1], other),
                                  ("mean score of the above", mean)]:
        expected = _protocol_accuracy(expected_scores, pairs.is_same, pairs.folds, done)
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {100 * expected:.2f} ± " in row
    assert "Fusion on folds 0,2,3 " in table


def test_a_fuse_member_picks_exactly_one_recipe(sweep, tmp_path, monkeypatch, capsys):
    lfw = tmp_path / "lfw"  # pairs.txt only: fusing reads the labels, not the images
    lfw.mkdir()
    (lfw / "pairs.txt").write_text("2 1\nAnn 1 2\nAnn 1 Bob 1\nCid 1 2\nCid 1 Dan 1\n")
    path = tmp_path / "sweep.json"
    results = sweep.SweepResults(str(path))
    warm = dict(SETTINGS, warmup_epochs=5.0)
    for fold in (0, 1):
        results.record(warm, "arcface", fold, np.array([0.9, 0.2]), 60.0, "cpu")
        results.record(dict(warm, batch_norm=True), "arcface", fold, np.array([0.7, 0.3]),
                       60.0, "cpu")

    with pytest.raises(UserInputError, match="Received: 2 such recipes\n  backbone=.*warmup"):
        results.member_runs("arcface@warmup_epochs=5")
    with pytest.raises(UserInputError, match="Received: 0 such recipes"):
        results.member_runs("softmax@warmup_epochs=5")
    with pytest.raises(UserInputError, match="Received: 'arcface@epoch=20'"):
        results.member_runs("arcface@epoch=20")  # no such setting
    # numbers compare as numbers; a later setting absent from a key has its default
    plain = results.member_runs("arcface@warmup_epochs=5,batch_norm=False")
    assert plain["0"]["scores"] == [0.9, 0.2]

    monkeypatch.setattr("sys.argv", ["x", "--lfw-dir", str(lfw), "--results", str(path),
                                     "--fuse", "arcface@batch_norm=False",
                                     "arcface@batch_norm=True"])
    sweep.main()
    out = capsys.readouterr().out
    assert "| arcface@batch_norm=True | 100.00 ± 0.00 % |" in out
    assert "| mean score of the above |" in out
