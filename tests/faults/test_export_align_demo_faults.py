"""`export`, `align` and `demo` with bad inputs: a named message, exit code 2, no traceback,
and nothing already there (an export version, a crop folder, a file) damaged."""

import csv

import numpy as np
import pytest
from fault_utils import (
    BROKEN_IMAGES,
    CROP,
    UNUSUAL_IMAGES,
    assert_user_error,
    face,
    run_cli,
    write_identity_folder,
    write_rgb,
)
from test_evaluate_faults import WRONG_MODELS

from keras_sphereface.alignment.detect import fallback_landmarks
from keras_sphereface.alignment.landmarks import write_landmarks_file

# --- export ---------------------------------------------------------------------------------


def export(*args):
    return run_cli("export", *args)


# evaluate reads SavedModels and .tflite files; export reads only .keras files and run dirs
EXPORT_WRONG_MODELS = sorted(
    set(WRONG_MODELS) - {"missing", "saved_model_wrong_signature", "saved_model_no_serving_default"}
)


@pytest.mark.parametrize("kind", EXPORT_WRONG_MODELS)
def test_export_model_of_the_wrong_kind(tmp_path, kind):
    model = WRONG_MODELS[kind](tmp_path)
    result = export("--model", model, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (model.name if kind != "not_an_image_model" else "(None, 10)") in result.output
    assert not (tmp_path / "out").exists()


def test_export_missing_model(tmp_path):
    result = export("--model", tmp_path / "nope.keras", "--output", tmp_path / "out")
    assert result.exit_code == 2 and "nope.keras" in result.output


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_export_output_under_a_file(tmp_path, tiny_model_file, export_format):
    (tmp_path / "file").write_text("x")
    result = export("--model", tiny_model_file, "--format", export_format,
                    "--output", tmp_path / "file" / "out")  # fmt: skip
    assert_user_error(result, "file")
    assert (tmp_path / "file").read_text() == "x"


def test_export_existing_version_is_kept(tmp_path, tiny_model_file, tiny_saved_model):
    before = (tiny_saved_model / "1" / "saved_model.pb").read_bytes()
    result = export("--model", tiny_model_file, "--output", tiny_saved_model)
    assert_user_error(result, str(tiny_saved_model / "1"))
    assert (tiny_saved_model / "1" / "saved_model.pb").read_bytes() == before


@pytest.mark.parametrize("kind", sorted(BROKEN_IMAGES) + ["empty_folder", "wrong_size"])
def test_export_bad_representative_folder(tmp_path, tiny_model_file, kind):
    folder = tmp_path / "rep"
    folder.mkdir()
    if kind in BROKEN_IMAGES:
        write_rgb(folder / "good.jpg", face(0))
        BROKEN_IMAGES[kind](folder / "bad.jpg")
    elif kind == "wrong_size":
        write_rgb(folder / "big.jpg", face(0, (250, 250)))
    result = export("--model", tiny_model_file, "--format", "tflite", "--quantize", "int8",
                    "--representative", folder, "--output", tmp_path / "m.tflite")  # fmt: skip
    assert_user_error(result, "rep")
    assert not (tmp_path / "m.tflite").exists()


def test_export_lfw_dir_without_lfw(tmp_path, tiny_model_file):
    result = export("--model", tiny_model_file, "--output", tmp_path / "sm", "--lfw-dir", tmp_path)
    assert_user_error(result, "pairs.txt")
    assert not (tmp_path / "sm").exists()  # refused before writing, not after


# --- align ----------------------------------------------------------------------------------


@pytest.fixture
def align_source(tmp_path):
    """Three identities of 112x96 faces and a landmarks file for them (no MTCNN needed)."""
    src = write_identity_folder(tmp_path / "src", identities=3, images_each=2)
    return src


def landmarks_for(src, path):
    points = fallback_landmarks((*CROP, 3))
    table = {
        p.relative_to(src).as_posix(): points for p in sorted(src.rglob("*")) if p.is_file()
    }
    write_landmarks_file(path, table)
    return path


def align(src, dst, *args):
    return run_cli("align", src, dst, "--workers", 1, *args)


def csv_rows(path):
    with open(path, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_align_missing_and_file_source(tmp_path):
    result = align(tmp_path / "nope", tmp_path / "dst")
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output
    (tmp_path / "file").write_text("x")
    result = align(tmp_path / "file", tmp_path / "dst")
    assert result.exit_code == 2 and "file" in result.output


def test_align_empty_source(tmp_path):
    (tmp_path / "src").mkdir()
    assert_user_error(align(tmp_path / "src", tmp_path / "dst"), "src")


@pytest.mark.parametrize("kind", sorted(BROKEN_IMAGES))
def test_align_broken_image_is_reported_and_exit_1(align_source, tmp_path, kind):
    """A bad file does not stop a long alignment run: it gets an 'unreadable' row with the
    reason, the others are aligned, and the exit code (1) and message name it."""
    BROKEN_IMAGES[kind](align_source / "person_1" / "bad.jpg")
    landmarks = landmarks_for(align_source, tmp_path / "lm.txt")
    result = align(align_source, tmp_path / "dst", "--from-landmarks", landmarks)
    assert result.exit_code == 1, result.output
    assert "person_1/bad.jpg" in result.output and "Traceback" not in result.output
    rows = csv_rows(tmp_path / "dst" / "alignment.csv")
    assert rows["person_1/bad.jpg"]["status"] == "unreadable" and rows["person_1/bad.jpg"]["reason"]
    assert sum(row["status"] == "ok" for row in rows.values()) == 6
    assert not (tmp_path / "dst" / "person_1" / "bad.jpg").exists()


def test_align_non_image_file_is_reported(align_source, tmp_path):
    (align_source / "person_0" / "notes.txt").write_text("photos from the party")
    landmarks = landmarks_for(align_source, tmp_path / "lm.txt")
    result = align(align_source, tmp_path / "dst", "--from-landmarks", landmarks)
    assert result.exit_code == 1 and "person_0/notes.txt" in result.output


def test_align_grayscale_rgba_16bit_are_aligned(align_source, tmp_path):
    written = [w(align_source / "person_2" / f"{k}.jpg") for k, w in UNUSUAL_IMAGES.items()]
    landmarks = landmarks_for(align_source, tmp_path / "lm.txt")
    result = align(align_source, tmp_path / "dst", "--from-landmarks", landmarks)
    assert result.exit_code == 0, result.output
    rows = csv_rows(tmp_path / "dst" / "alignment.csv")
    for path in written:
        row = rows[path.relative_to(align_source).as_posix()]
        assert row["status"] == "ok", row
    assert "grayscale" in " ".join(row["reason"] for row in rows.values()).lower()


@pytest.mark.parametrize(
    "content, fragments",
    [("person_0/0.jpg 1 2\n", ["line 1", "person_0/0.jpg 1 2"]), ("", None)],
    ids=["short_line", "empty"],
)
def test_align_bad_landmarks_file(align_source, tmp_path, content, fragments):
    (tmp_path / "lm.txt").write_text(content)
    result = align(align_source, tmp_path / "dst", "--from-landmarks", tmp_path / "lm.txt")
    if fragments:
        assert_user_error(result, *fragments)
    else:  # no image in the file: every crop uses the fallback, each one reported
        assert result.exit_code == 0 and "fallback 6" in result.output, result.output


def test_align_output_under_a_file_inside_source_and_bad_size(align_source, tmp_path):
    (tmp_path / "file").write_text("x")
    assert_user_error(align(align_source, tmp_path / "file" / "dst"), "file")
    assert (tmp_path / "file").read_text() == "x"
    assert_user_error(align(align_source, align_source / "crops"), "outside the source")
    assert_user_error(align(align_source, tmp_path / "dst", "--size", "100x100"), "100")


def test_align_resume_with_other_settings_or_a_damaged_settings_file(align_source, tmp_path):
    landmarks = landmarks_for(align_source, tmp_path / "lm.txt")
    assert align(align_source, tmp_path / "dst", "--from-landmarks", landmarks).exit_code == 0
    crops = sorted(p.read_bytes() for p in (tmp_path / "dst").rglob("*.jpg"))
    result = align(align_source, tmp_path / "dst", "--from-landmarks", landmarks,
                   "--size", "112x112")  # fmt: skip
    assert_user_error(result, "alignment.json", "112x112")
    (tmp_path / "dst" / "alignment.json").write_text('{"source": ')
    result = align(align_source, tmp_path / "dst", "--from-landmarks", landmarks)
    assert_user_error(result, "alignment.json")
    assert sorted(p.read_bytes() for p in (tmp_path / "dst").rglob("*.jpg")) == crops


# --- demo -----------------------------------------------------------------------------------


def test_demo_refuses_outputs_it_would_damage(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    for output in (tmp_path / "file", tmp_path / "file" / "sub", tmp_path / "mine"):
        result = run_cli("demo", "--output", output, "--epochs", 1)
        assert_user_error(result, output.name if output.name != "sub" else "file")
    assert (tmp_path / "file").read_text() == "x"
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize(
    "args", [["--epochs", "0"], ["--epochs", "many"], ["--embedding-dim", "4"], ["--seed", "x"]]
)
def test_demo_bad_options(tmp_path, args):
    result = run_cli("demo", "--output", tmp_path / "out", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert args[0] in result.output and not (tmp_path / "out").exists()
