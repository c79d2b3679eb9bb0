"""kill -9 at the worst moment loses at most the step in progress.

Each test runs a CLI command in a subprocess whose writer is patched to stop *inside* a write
(the temporary file is half written, the rename has not happened), then kills it with SIGKILL:

- `train` during a checkpoint write: checkpoint.keras is still the previous epoch's, loads,
  and `--resume` finishes the run from it (and a full disk at that moment: a message, exit
  code 2, the previous checkpoint kept);
- `export --overwrite` during a SavedModel / TFLite write: the previous export still loads and
  gives the same embeddings;
- `align` and `evaluate`, killed mid-run: the second run does only what remains (counted from
  the CSV rows / cache keys left by the first, never from timings).
"""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from fault_utils import (
    CROP,
    REPO_ROOT,
    TINY_TRAIN,
    face,
    run_cli,
    write_identity_folder,
    write_rgb,
)

import keras_sphereface.training  # noqa: F401 (registers MarginSoftmax and the optimizer)
from keras_sphereface.alignment.detect import fallback_landmarks
from keras_sphereface.alignment.landmarks import write_landmarks_file

MARKER = "paused_inside_write"


def start_patched(tmp_path, patch, *args):
    """Start `python cli/main.py ARGS` with `patch` (Python source, may use MARKER_PATH and
    pause()) applied first; returns the Popen and the marker path."""
    marker = tmp_path / MARKER
    script = tmp_path / "patched_cli.py"
    script.write_text(
        "import os, runpy, sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        f"MARKER_PATH = {str(marker)!r}\n"
        "def pause():\n"
        "    open(MARKER_PATH, 'w').close()\n"
        "    time.sleep(600)\n"
        + textwrap.dedent(patch)
        + f"\nsys.argv = ['cli/main.py'] + {[str(a) for a in args]!r}\n"
        f"runpy.run_path({str(REPO_ROOT / 'cli' / 'main.py')!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    # output to a file, not a pipe: a long progress bar must never block the child on a full pipe
    with open(tmp_path / "patched_cli.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    process.log_path = tmp_path / "patched_cli.log"
    return process, marker


def output_of(process):
    return process.log_path.read_text(errors="replace")


def wait_then_kill(process, ready, timeout=240):
    """SIGKILL `process` as soon as `ready()` is true; fail if it exits or times out first."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"exited ({process.returncode}) before the kill:\n"
                            f"{output_of(process)[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for the moment to kill")
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


def optimizer_steps(path):
    model = keras.saving.load_model(path)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations)), model


# keras.Model.save, patched: the `PAUSE_AT`-th call writes the temporary file, cuts it in
# half (a write in progress) and pauses before atomic_path can rename it.
SAVE_PATCH = """
import keras
_save, _calls = keras.Model.save, [0]
def save(self, path, *args, **kwargs):
    _calls[0] += 1
    _save(self, path, *args, **kwargs)
    if _calls[0] == PAUSE_AT:
        with open(path, 'r+b') as f:
            f.truncate(os.path.getsize(path) // 2)
        pause()
keras.Model.save = save
"""


def test_train_killed_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    """Saves: #1 epoch 0 (before fit), #2 after epoch 1, #3 after epoch 2 ← killed inside."""
    data = write_identity_folder(tmp_path / "faces")  # 12 images, batch 4: 3 steps per epoch
    run = tmp_path / "run"
    process, marker = start_patched(
        tmp_path, "PAUSE_AT = 3\n" + SAVE_PATCH,
        "train", "--data", data, "--output", run, "--epochs", 3, "--batch-size", 4, *TINY_TRAIN,
    )  # fmt: skip
    wait_then_kill(process, marker.exists)
    leftovers = [name for name in os.listdir(run) if name.endswith(".tmp.keras")]
    assert leftovers, "the kill should have happened inside the write"
    steps, _ = optimizer_steps(run / "checkpoint.keras")
    assert steps == 3  # epoch 1, intact
    result = run_cli("train", "--resume", "--output", run)
    assert result.exit_code == 0, result.output
    steps, model = optimizer_steps(run / "checkpoint.keras")
    assert steps == 9
    assert not [name for name in os.listdir(run) if name.endswith(".tmp.keras")]  # cleaned up
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


DISK_FULL_PATCH = """
import resource, signal
import keras
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
_save, _calls = keras.Model.save, [0]
def save(self, path, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == 2:  # the disk fills up before the epoch-1 checkpoint
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
    return _save(self, path, *args, **kwargs)
keras.Model.save = save
"""


def test_train_disk_full_during_a_checkpoint_write(tmp_path):
    """A full disk (file size limit) while writing the epoch-1 checkpoint: a message naming
    the checkpoint, exit code 2, and the epoch-0 checkpoint intact with no temporary left."""
    data = write_identity_folder(tmp_path / "faces")
    run = tmp_path / "run"
    process, _ = start_patched(
        tmp_path, DISK_FULL_PATCH,
        "train", "--data", data, "--output", run, "--epochs", 2, "--batch-size", 4, *TINY_TRAIN,
    )  # fmt: skip
    process.wait(timeout=240)
    output = output_of(process)
    assert process.returncode == 2, output
    assert "Traceback" not in output and "checkpoint.keras still holds the previous one" in output
    assert optimizer_steps(run / "checkpoint.keras")[0] == 0
    assert not [name for name in os.listdir(run) if name.startswith(".")]


def test_train_killed_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    """Three unpatched runs, each killed at a random moment after its first checkpoint."""
    data = write_identity_folder(tmp_path / "faces")
    rng = np.random.default_rng(0)
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        process, _ = start_patched(
            tmp_path, "", "train", "--data", data, "--output", run, "--epochs", 50,
            "--batch-size", 4, *TINY_TRAIN,
        )  # fmt: skip
        first = run / "checkpoint.keras"
        started = []

        def ready():
            if not first.exists():
                return False
            started.append(started[0] if started else time.monotonic())
            return time.monotonic() - started[0] > rng.uniform(0.2, 3.0)

        wait_then_kill(process, ready)
        steps, _ = optimizer_steps(first)
        assert steps % 3 == 0


EXPORT_PATCH = """
import keras_sphereface.export.saved_model as saved_model
_write = saved_model.write_saved_model
def write_saved_model(model, path, *args, **kwargs):
    _write(model, path, *args, **kwargs)
    pb = os.path.join(path, 'saved_model.pb')
    with open(pb, 'r+b') as f:
        f.truncate(os.path.getsize(pb) // 2)
    pause()
saved_model.write_saved_model = write_saved_model
"""

TFLITE_PATCH = """
import contextlib
import keras_sphereface.export.tflite as tflite
_atomic_path = tflite.atomic_path
@contextlib.contextmanager
def atomic_path(path):
    with _atomic_path(path) as tmp:
        yield tmp
        with open(tmp, 'r+b') as f:
            f.truncate(os.path.getsize(tmp) // 2)
        pause()
tflite.atomic_path = atomic_path
"""


@pytest.mark.parametrize("export_format", ["saved_model", "tflite"])
def test_export_killed_during_a_write_keeps_the_previous_export(
    tmp_path, tiny_model_file, export_format
):
    from keras_sphereface.evaluation.extract import load_embedder

    output = tmp_path / ("export" if export_format == "saved_model" else "model.tflite")
    first = run_cli("export", "--model", tiny_model_file, "--format", export_format,
                    "--output", output)  # fmt: skip
    assert first.exit_code == 0, first.output
    faces = np.stack([face(i) for i in range(4)])
    before = load_embedder(output)(faces)

    # a second training run's model, exported over the first with --overwrite, killed inside
    other = tmp_path / "other.keras"
    from keras_sphereface.backbones import get_backbone

    get_backbone("sphere4", input_shape=(*CROP, 3), embedding_dim=8, width_multiplier=0.125).save(
        other
    )
    process, marker = start_patched(
        tmp_path, EXPORT_PATCH if export_format == "saved_model" else TFLITE_PATCH,
        "export", "--model", other, "--format", export_format, "--output", output, "--overwrite",
    )  # fmt: skip
    wait_then_kill(process, marker.exists)
    after = load_embedder(output)(faces)
    np.testing.assert_array_equal(after, before)
    if export_format == "saved_model":
        assert sorted(n for n in os.listdir(output) if n.isdigit()) == ["1"]


ALIGN_PATCH = """
import keras_sphereface.alignment.folder as folder
_write_image = folder.write_image
def write_image(path, image):
    _write_image(path, image)
    time.sleep(0.03)
folder.write_image = write_image
"""


def csv_paths(path):
    with open(path, newline="") as f:
        return [row[0] for row in csv.reader(f)][1:]


def test_align_resumes_after_a_kill(tmp_path):
    src = write_identity_folder(tmp_path / "src", identities=6, images_each=20)  # 120 files
    points = fallback_landmarks((*CROP, 3))
    landmarks = tmp_path / "lm.txt"
    write_landmarks_file(landmarks, {p.relative_to(src).as_posix(): points
                                     for p in src.rglob("*.jpg")})  # fmt: skip
    dst, report = tmp_path / "dst", tmp_path / "dst" / "alignment.csv"
    args = ["align", src, dst, "--from-landmarks", landmarks, "--workers", 1]
    process, _ = start_patched(tmp_path, ALIGN_PATCH, *args)
    wait_then_kill(process, lambda: report.exists() and len(csv_paths(report)) >= 40)
    rows_at_kill = [p for p in csv_paths(report) if (dst / p).is_file()]
    assert 40 <= len(rows_at_kill) < 120

    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert f"ok 120, fallback 0, unreadable 0 ({len(rows_at_kill)} done by an earlier run)" in (
        result.output
    )
    rows = csv_paths(report)
    assert len(rows) == len(set(rows)) == 120
    assert not [p for p in dst.rglob(".*") if p.is_file()]  # no temporary files left


EVALUATE_PATCH = """
import functools
import keras_sphereface.evaluation.extract as extract
import keras_sphereface.evaluation.lfw as lfw
lfw.extract_embeddings = functools.partial(extract.extract_embeddings, save_every=0.0)
_embed_batch = extract.embed_batch
def embed_batch(*args, **kwargs):
    time.sleep(0.25)
    return _embed_batch(*args, **kwargs)
extract.embed_batch = embed_batch
"""


def cache_keys(path):
    try:
        with np.load(path) as data:
            return [k for k in data.files if k != "__settings__"]
    except (OSError, ValueError):
        return []


def test_evaluate_resumes_from_its_cache_after_a_kill(tmp_path, tiny_model_file):
    names = [f"P{i}" for i in range(10)]
    images = tmp_path / "images"
    for n, name in enumerate(names):
        for i in range(1, 5):
            write_rgb(images / name / f"{name}_{i:04d}.jpg", face(100 * n + i))
    lines = ["2 5"]
    for fold in range(2):
        group = names[5 * fold : 5 * fold + 5]
        lines += [f"{name} 1 2" for name in group]
        lines += [f"{a} 3 {b} 4" for a, b in zip(group, group[1:] + group[:1])]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    cache = tmp_path / "cache.npz"
    args = ["evaluate", "--pairs", pairs, "--images", images, "--aligned", "--no-flip",
            "--model", tiny_model_file, "--batch-size", 2, "--cache", cache]  # fmt: skip
    process, _ = start_patched(tmp_path, EVALUATE_PATCH, *args)
    wait_then_kill(process, lambda: cache.exists() and len(cache_keys(cache)) >= 6)
    cached = len(cache_keys(cache))
    assert 6 <= cached < 40

    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert f"embedded {40 - cached} images ({cached} from cache)" in result.output
    assert len(cache_keys(cache)) == 40
