"""Folder alignment: statuses and reasons for bad files, the CSV, resuming, the landmarks file."""

import csv
import os

import cv2
import numpy as np
import pytest

from keras_sphereface.alignment import detect
from keras_sphereface.alignment.folder import (
    CSV_COLUMNS,
    STATUSES,
    align_folder,
    read_fallback_paths,
)
from keras_sphereface.alignment.landmarks import read_landmarks_file, write_landmarks_file
from keras_sphereface.errors import UserInputError

GOOD_LANDMARKS = np.array([[90, 100], [160, 100], [125, 140], [95, 180], [155, 180]], np.float32)


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _encoded(image, ext):
    return cv2.imencode(ext, image)[1].tobytes()


def _make_tree(root, people=3, per_person=3):
    """people x per_person readable 250x250 JPEGs; returns their relative paths."""
    paths = []
    for p in range(people):
        for i in range(per_person):
            relpath = f"Person_{p}/Person_{p}_{i + 1:04d}.jpg"
            _write(root / relpath, _encoded(_noise((250, 250, 3), seed=10 * p + i), ".jpg"))
            paths.append(relpath)
    return paths


def _add_bad_files(root, size="112x96"):
    """The bad inputs of the issue; returns {relpath: expected status}."""
    jpeg = _encoded(_noise((120, 100, 3)), ".jpg")
    _write(root / "Bad/zero.jpg", b"")
    _write(root / "Bad/truncated.jpg", jpeg[: len(jpeg) // 2])
    _write(root / "Bad/corrupt.jpg", jpeg[:2] + bytes(range(256)) * 4 + jpeg[-2:])
    _write(root / "Bad/notes.txt", b"not an image\n")
    _write(root / "Odd/gray.png", _encoded(_noise((130, 110)), ".png"))
    _write(root / "Odd/rgba.png", _encoded(_noise((130, 110, 4)), ".png"))
    deep = _noise((130, 110, 3)).astype(np.uint16) * 257
    _write(root / "Odd/deep.png", _encoded(deep, ".png"))
    _write(root / "Odd/tiny.jpg", _encoded(_noise((40, 30, 3)), ".jpg"))
    return {
        "Bad/zero.jpg": ("unreadable", "empty"),
        "Bad/truncated.jpg": ("unreadable", "truncated"),
        "Bad/corrupt.jpg": ("unreadable", "decode"),
        "Bad/notes.txt": ("unreadable", "decode"),
        "Odd/gray.png": ("fallback", "grayscale"),
        "Odd/rgba.png": ("fallback", "alpha"),
        "Odd/deep.png": ("fallback", "16-bit"),
        "Odd/tiny.jpg": ("fallback", f"smaller than the {size} crop"),
    }


def _read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_COLUMNS
    return {row[0]: dict(zip(CSV_COLUMNS, row)) for row in rows[1:]}


def _landmarks_for(paths):
    return {path: GOOD_LANDMARKS + i for i, path in enumerate(paths)}


def test_from_landmarks_gives_every_file_a_row_status_and_reason(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = _make_tree(src)
    expected = _add_bad_files(src)
    table = tmp_path / "table.txt"
    write_landmarks_file(table, _landmarks_for(good[1:]))  # good[0] is missing from the file

    summary = align_folder(src, dst, workers=1, from_landmarks=table)

    rows = _read_csv(dst / "alignment.csv")
    assert sorted(rows) == sorted(good + list(expected))
    for relpath, (status, reason) in expected.items():
        assert rows[relpath]["status"] == status and reason in rows[relpath]["reason"], relpath
    assert rows[good[0]]["status"] == "fallback"
    assert "not in the landmarks file" in rows[good[0]]["reason"]
    for relpath in good[1:]:
        assert rows[relpath]["status"] == "ok"
        written = [float(rows[relpath][c]) for c in CSV_COLUMNS[5:15]]
        np.testing.assert_allclose(written, _landmarks_for(good[1:])[relpath].ravel(), atol=0.01)
    assert summary["ok"] == len(good) - 1
    assert summary["fallback"] == 5 and summary["unreadable"] == 4 and summary["resumed"] == 0

    for relpath, row in rows.items():
        crop_path = dst / relpath
        if row["status"] == "unreadable":
            assert not crop_path.exists()
        else:
            crop = cv2.imread(str(crop_path), cv2.IMREAD_UNCHANGED)
            assert crop.shape == (112, 96, 3) and crop.dtype == np.uint8, relpath

    written = read_landmarks_file(dst / "landmarks.txt")
    assert sorted(written) == sorted(p for p, r in rows.items() if r["status"] != "unreadable")
    np.testing.assert_allclose(written[good[0]], detect.fallback_landmarks((250, 250)), atol=0.01)

    # Aligning again from that landmarks file keeps the fallbacks marked as such.
    assert read_fallback_paths(dst / "landmarks.txt") == {
        p for p, r in rows.items() if r["status"] == "fallback"
    }
    again = align_folder(src, tmp_path / "dst2", workers=1, from_landmarks=dst / "landmarks.txt")
    assert {k: again[k] for k in STATUSES} == {k: summary[k] for k in STATUSES}
    rows = _read_csv(tmp_path / "dst2" / "alignment.csv")
    assert rows[good[0]]["status"] == "fallback"
    assert "no face found when the landmarks file was made" in rows[good[0]]["reason"]


@pytest.mark.slow
def test_detection_reports_fallback_for_faceless_images(tmp_path):
    """MTCNN finds no face in noise; bad files never stop the run (one process, real detector)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = _make_tree(src, people=1, per_person=2)
    expected = _add_bad_files(src, size="112x112")
    summary = align_folder(src, dst, size="112x112", workers=1)
    rows = _read_csv(dst / "alignment.csv")
    for relpath, (status, reason) in expected.items():
        assert rows[relpath]["status"] == status and reason in rows[relpath]["reason"], relpath
    for relpath in good:
        assert rows[relpath]["status"] == "fallback"
        assert rows[relpath]["reason"].startswith("no face found")
        assert cv2.imread(str(dst / relpath)).shape == (112, 112, 3)
    assert summary["unreadable"] == 4 and summary["fallback"] == 6


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = _make_tree(src, people=4, per_person=10)
    expected = _add_bad_files(src)
    table = tmp_path / "table.txt"
    write_landmarks_file(table, _landmarks_for(good))
    first = align_folder(src, dst, workers=2, from_landmarks=table)
    total = len(good) + len(expected)
    assert first["ok"] + first["fallback"] + first["unreadable"] == total

    # Simulate a kill: the last 5 rows never written, a torn row, a crop whose row exists
    # but whose file is gone, and a temporary file an atomic write left behind.
    with open(dst / "alignment.csv") as f:
        lines = f.readlines()
    lost = [line.split(",")[0] for line in lines[-5:]]
    torn = lines[-6]
    with open(dst / "alignment.csv", "w") as f:
        f.writelines(lines[:-6])
        f.write(torn[: len(torn) // 2])
    lost.append(torn.split(",")[0])
    deleted = next(p for p in good if p not in lost)
    os.remove(dst / deleted)
    leftover = dst / "Person_0" / ".Person_0_0001.a1b2c3.tmp.jpg"
    leftover.write_bytes(b"half")
    untouched = next(p for p in good if p not in lost and p != deleted)
    stamp = os.stat(dst / untouched).st_mtime_ns

    second = align_folder(src, dst, workers=2, from_landmarks=table)

    assert second["resumed"] == total - len(lost) - 1
    assert {k: second[k] for k in ("ok", "fallback", "unreadable")} == {
        k: first[k] for k in ("ok", "fallback", "unreadable")
    }
    with open(dst / "alignment.csv", newline="") as f:
        paths = [row[0] for row in csv.reader(f)][1:]
    assert sorted(paths) == sorted(good + list(expected))  # one row each, no torn row
    assert (dst / deleted).exists() and not leftover.exists()
    assert os.stat(dst / untouched).st_mtime_ns == stamp  # done work is not redone
    assert not [n for _, _, names in os.walk(dst) for n in names if ".tmp" in n]


def test_resuming_with_other_settings_is_refused(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = _make_tree(src, people=1, per_person=1)
    table = tmp_path / "table.txt"
    write_landmarks_file(table, _landmarks_for(good))
    align_folder(src, dst, workers=1, from_landmarks=table)
    with pytest.raises(UserInputError, match="other settings"):
        align_folder(src, dst, size=(112, 112), workers=1, from_landmarks=table)


@pytest.mark.parametrize("size", ["100x100", "112"])
def test_bad_size_and_output_inside_source_are_user_errors(tmp_path, size):
    src = tmp_path / "src"
    _make_tree(src, people=1, per_person=1)
    with pytest.raises(UserInputError, match="Expected a crop size"):
        align_folder(src, tmp_path / "dst", size=size, workers=1)
    with pytest.raises(UserInputError, match="outside the source"):
        align_folder(src, src / "aligned", workers=1)


def test_cli_align_from_landmarks_and_bad_size(tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    src, dst = tmp_path / "src", tmp_path / "dst"
    good = _make_tree(src, people=2, per_person=2)
    _write(src / "Bad/zero.jpg", b"")
    table = tmp_path / "table.txt"
    write_landmarks_file(table, _landmarks_for(good))
    out = tmp_path / "out.txt.gz"
    runner = CliRunner()
    result = runner.invoke(
        main, ["align", str(src), str(dst), "--from-landmarks", str(table), "--workers", "1",
               "--landmarks-out", str(out)],
    )
    assert result.exit_code == 1, result.output  # every file aligned but one unreadable
    assert "ok 4, fallback 0, unreadable 1" in result.output and "Bad/zero.jpg" in result.output
    assert sorted(read_landmarks_file(out)) == sorted(good)

    result = runner.invoke(main, ["align", str(src), str(tmp_path / "d2"), "--size", "100x100"])
    assert result.exit_code == 2 and "Expected a crop size" in result.output
    assert "Traceback" not in result.output


def test_list_files_follows_folder_links_once_and_skips_hidden(tmp_path):
    from keras_sphereface.alignment.folder import list_files

    _write(tmp_path / "src/A/a.jpg", b"x")
    _write(tmp_path / "src/A/.hidden.jpg", b"x")
    _write(tmp_path / "elsewhere/B/b.jpg", b"x")
    os.symlink(tmp_path / "elsewhere/B", tmp_path / "src/B")
    os.symlink(tmp_path / "src", tmp_path / "src/A/loop")  # a cycle
    assert list_files(tmp_path / "src") == ["A/a.jpg", "B/b.jpg"]
