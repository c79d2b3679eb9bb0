"""`evaluate` with bad pair lists, images, models and embeddings: one message naming the
file / line / value, exit code 2, no traceback."""

import zipfile

import numpy as np
import pytest

from fault_utils import (
    BROKEN_IMAGES,
    UNUSUAL_IMAGES,
    assert_user_error,
    face,
    run_cli,
    write_rgb,
)

NAMES = ("Ann", "Bob", "Cid")
GOOD_PAIRS = "2 1\nAnn 1 2\nAnn 1 Bob 1\nBob 1 2\nBob 2 Cid 1\n"


@pytest.fixture
def pair_set(tmp_path):
    """images/NAME/NAME_000i.jpg aligned 112x96 crops and a 2-fold pairs file."""
    images = tmp_path / "images"
    for n, name in enumerate(NAMES):
        for i in (1, 2):
            write_rgb(images / name / f"{name}_{i:04d}.jpg", face(10 * n + i))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(GOOD_PAIRS)
    return pairs, images


def evaluate(pairs, images, *args):
    return run_cli("evaluate", "--pairs", pairs, "--images", images, "--aligned", "--no-flip",
                   "--batch-size", 2, *args)  # fmt: skip


def test_good_pair_set_runs(pair_set, tiny_model_file):
    """The reference the faults below start from."""
    result = evaluate(*pair_set, "--model", tiny_model_file)
    assert result.exit_code == 0, result.output
    assert "4 pairs" in result.output


PAIR_FILES = {
    "empty": ("", ["pairs.txt", "empty file"]),
    "blank_lines": ("\n\n  \n", ["pairs.txt", "empty file"]),
    "bad_header": ("ten 300\nAnn 1 2\n", ["line 1", "ten 300"]),
    "zero_folds": ("0 1\n", ["line 1", "0 1"]),
    "too_few_lines": ("2 1\nAnn 1 2\nAnn 1 Bob 1\nBob 1 2\n", ["expected 4 pair lines", "3"]),
    "too_many_folds": (GOOD_PAIRS.replace("2 1", "3 1"), ["3 folds", "expected 6"]),
    "matched_where_mismatched": (GOOD_PAIRS.replace("Ann 1 Bob 1", "Ann 1 2"), ["line 3"]),
    "bad_index": (GOOD_PAIRS.replace("Bob 1 2", "Bob one 2"), ["line 4", "Bob one 2"]),
    "zero_index": (GOOD_PAIRS.replace("Bob 1 2", "Bob 0 2"), ["line 4", "Bob 0 2"]),
    "missing_image": (GOOD_PAIRS.replace("Bob 2 Cid 1", "Bob 2 Cid 7"), ["line 5", "Cid_0007.jpg"]),
    "binary_garbage": (None, ["pairs.txt"]),
}


@pytest.mark.parametrize("name", sorted(PAIR_FILES))
def test_bad_pairs_file(pair_set, tiny_model_file, name):
    pairs, images = pair_set
    content, fragments = PAIR_FILES[name]
    if content is None:
        pairs.write_bytes(bytes(range(256)) * 4)
    else:
        pairs.write_text(content)
    assert_user_error(evaluate(pairs, images, "--model", tiny_model_file), *fragments)


def test_missing_pairs_file_and_images_folder(pair_set, tiny_model_file, tmp_path):
    pairs, images = pair_set
    missing = evaluate(tmp_path / "nope.txt", images, "--model", tiny_model_file)
    assert_user_error(missing, "nope.txt")
    assert_user_error(evaluate(pairs, tmp_path / "noimg", "--model", tiny_model_file), "noimg")


def test_lfw_dir_without_lfw(tmp_path, tiny_model_file):
    result = run_cli("evaluate", "--lfw", "--lfw-dir", tmp_path, "--model", tiny_model_file)
    assert_user_error(result, str(tmp_path), "pairs.txt")


@pytest.mark.parametrize("kind", sorted(BROKEN_IMAGES))
def test_broken_image_is_named(pair_set, tiny_model_file, kind):
    pairs, images = pair_set
    target = images / "Cid" / "Cid_0001.jpg"
    BROKEN_IMAGES[kind](target)
    assert_user_error(evaluate(pairs, images, "--model", tiny_model_file), "Cid_0001.jpg")


def test_grayscale_rgba_16bit_images_are_read(pair_set, tiny_model_file):
    pairs, images = pair_set
    targets = [images / "Ann" / "Ann_0001.jpg", images / "Ann" / "Ann_0002.jpg",
               images / "Bob" / "Bob_0001.jpg", images / "Bob" / "Bob_0002.jpg"]  # fmt: skip
    for target, (kind, write) in zip(targets, sorted(UNUSUAL_IMAGES.items())):
        written = write(target)  # PNG content under the pair list's .jpg name
        written.replace(target)
    result = evaluate(pairs, images, "--model", tiny_model_file)
    assert result.exit_code == 0, result.output


def test_crop_of_the_wrong_size(pair_set, tiny_model_file):
    pairs, images = pair_set
    write_rgb(images / "Ann" / "Ann_0002.jpg", face(0, (250, 250)))
    result = evaluate(pairs, images, "--model", tiny_model_file)
    assert_user_error(result, "Ann_0002.jpg", "250x250")


def _text_keras(path):
    path = path / "model.keras"
    path.write_text("not a model")
    return path


def _empty_keras(path):
    path = path / "model.keras"
    path.write_bytes(b"")
    return path


def _other_zip_keras(path):
    path = path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return path


def _garbage_tflite(path):
    path = path / "model.tflite"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _text_tflite(path):
    path = path / "model.tflite"
    path.write_text("TFL3 but not really")
    return path


def _empty_dir(path):
    (path / "empty_dir").mkdir()
    return path / "empty_dir"


def _run_dir_with_bad_checkpoint(path):
    (path / "run").mkdir()
    (path / "run" / "checkpoint.keras").write_text("torn")
    return path / "run"


def _not_an_image_model(path):
    import keras

    inputs = keras.Input((10,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    model.save(path / "dense.keras")
    return path / "dense.keras"


def _saved_model_without_the_signature(path):
    """A SavedModel whose serving_default takes `x` and returns `y` (not images → embeddings)."""
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2.0}

    module = Module()
    signatures = {"serving_default": module.serve}
    tf.saved_model.save(module, str(path / "other_sm"), signatures=signatures)
    return path / "other_sm"


def _saved_model_without_serving_default(path):
    import tensorflow as tf

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, x):
            return x

    module = Module()
    tf.saved_model.save(module, str(path / "sm_other_name"), signatures={"predict": module.serve})
    return path / "sm_other_name"


def _torn_saved_model(path):
    (path / "torn_sm" / "1").mkdir(parents=True)
    (path / "torn_sm" / "1" / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    return path / "torn_sm"


def _tiny_backbone():
    from keras_sphereface.backbones import get_backbone

    return get_backbone(
        "sphere4", input_shape=(112, 96, 3), embedding_dim=8, width_multiplier=0.125
    )


def _truncated_keras(path):
    """A real .keras file cut in half (a copy interrupted by a full disk)."""
    path = path / "model.keras"
    _tiny_backbone().save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _truncated_tflite(path):
    from keras_sphereface.export import export_tflite

    path = path / "model.tflite"
    export_tflite(_tiny_backbone(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


WRONG_MODELS = {
    "truncated_keras": _truncated_keras,
    "truncated_tflite": _truncated_tflite,
    "missing": lambda path: path / "nope.keras",
    "text_keras": _text_keras,
    "empty_keras": _empty_keras,
    "other_zip_keras": _other_zip_keras,
    "garbage_tflite": _garbage_tflite,
    "text_tflite": _text_tflite,
    "empty_dir": _empty_dir,
    "run_dir_bad_checkpoint": _run_dir_with_bad_checkpoint,
    "not_an_image_model": _not_an_image_model,
    "saved_model_wrong_signature": _saved_model_without_the_signature,
    "saved_model_no_serving_default": _saved_model_without_serving_default,
    "torn_saved_model": _torn_saved_model,
}


@pytest.mark.parametrize("kind", sorted(WRONG_MODELS))
def test_model_of_the_wrong_kind(pair_set, tmp_path, kind):
    model = WRONG_MODELS[kind](tmp_path)
    result = evaluate(*pair_set, "--model", model)
    assert_user_error(result, model.name)


def _embeddings(path, content):
    np.savez(path, **content)
    return path


def _file(path, content):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda p: p / "nope.npz", ["nope.npz"]),
        (lambda p: _file(p / "e.npz", b"text"), ["e.npz"]),
        (lambda p: _file(p / "e.npz", b""), ["e.npz"]),
        (lambda p: _embeddings(p / "e.npz", {"Ann/Ann_0001.jpg": np.ones(4)}),
         ["line 2", "Ann_0002"]),
    ],
    ids=["missing", "text", "zero_byte", "missing_key"],
)
def test_bad_embeddings_file(pair_set, tmp_path, make, fragments):
    pairs, _ = pair_set
    result = run_cli("evaluate", "--pairs", pairs, "--embeddings", make(tmp_path))
    assert_user_error(result, *fragments)


def test_truncated_embeddings_file(pair_set, tmp_path):
    pairs, _ = pair_set
    content = {f"{n}/{n}_{i:04d}.jpg": np.ones(4) for n in NAMES for i in (1, 2)}
    path = _embeddings(tmp_path / "e.npz", content)
    path.write_bytes(path.read_bytes()[:300])
    assert_user_error(run_cli("evaluate", "--pairs", pairs, "--embeddings", path), "e.npz")


def test_truncated_cache_is_named(pair_set, tiny_model_file, tmp_path):
    cache = tmp_path / "cache.npz"
    assert evaluate(*pair_set, "--model", tiny_model_file, "--cache", cache).exit_code == 0
    cache.write_bytes(cache.read_bytes()[:200])
    result = evaluate(*pair_set, "--model", tiny_model_file, "--cache", cache)
    assert_user_error(result, "cache.npz")


def test_cache_of_another_model_is_refused(pair_set, tiny_model_file, tiny_saved_model, tmp_path):
    cache = tmp_path / "cache.npz"
    assert evaluate(*pair_set, "--model", tiny_model_file, "--cache", cache).exit_code == 0
    before = cache.read_bytes()
    result = evaluate(*pair_set, "--model", tiny_saved_model, "--cache", cache)
    assert_user_error(result, "cache.npz")
    assert cache.read_bytes() == before


@pytest.mark.parametrize("option", ["--report", "--roc", "--cache"])
def test_unwritable_output_under_a_file(pair_set, tiny_model_file, tmp_path, option):
    """Tests run as root (chmod does not block writes): a path below a regular file."""
    (tmp_path / "file").write_text("x")
    result = evaluate(*pair_set, "--model", tiny_model_file, option, tmp_path / "file" / "out")
    assert_user_error(result, "file")
    assert "accuracy" not in result.output  # refused before the evaluation, not after it
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize(
    "args, fragments",
    [
        ([], ["--model"]),
        (["--lfw"], ["--lfw", "--pairs"]),
        (["--landmarks", "x.txt"], ["aligned", "landmarks"]),
    ],
    ids=["no_model", "lfw_and_pairs", "aligned_and_landmarks"],
)
def test_conflicting_options(pair_set, tiny_model_file, args, fragments):
    extra = [] if args == [] else ["--model", tiny_model_file]
    assert_user_error(evaluate(*pair_set, *extra, *args), *fragments)
