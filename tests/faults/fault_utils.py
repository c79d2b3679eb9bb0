"""Helpers of the fault suite: a CLI runner that fails on tracebacks, the bad image files a
user hits, and a tiny identity folder of aligned crops."""

import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CROP = (112, 96)
TINY_TRAIN = ["--backbone", "sphere4", "--width-multiplier", "0.125", "--embedding-dim", "8"]


def run_cli(*args):
    """Run `python cli/main.py ARGS` in this process → click Result.

    A user error must end as a clean exit (SystemExit, i.e. a message): any other exception
    escaping the command is what a user would see as a traceback.
    """
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"uncaught exception (a user would see a traceback):\n{trace}\n{result.output}")
    return result


def assert_user_error(result, *fragments):
    """Exit code 2, no traceback, and every fragment (file, line, value) in the message."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Error:" in result.output, result.output
    for fragment in fragments:
        assert str(fragment) in result.output, (fragment, result.output)


def run_subprocess(*args, timeout=300, **kwargs):
    """`python cli/main.py ARGS` in a fresh process (real exit code, real stderr)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "cli" / "main.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, **kwargs,
    )  # fmt: skip


def face(seed, size=CROP):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def write_rgb(path, image):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


# Bad image files a user hits: name → writer(path). The valid-but-unusual kinds (grayscale,
# RGBA, 16-bit) must be read; the broken ones must be named in a clear error.
def _truncated(path):
    write_rgb(path, face(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _corrupt(path):
    write_rgb(path, face(2))
    data = bytearray(path.read_bytes())
    data[200:] = b"\x00" * (len(data) - 200)  # valid header, garbage entropy data
    path.write_bytes(bytes(data))


BROKEN_IMAGES = {
    "zero_byte": lambda path: path.write_bytes(b""),
    "truncated": _truncated,
    "corrupt": _corrupt,
    "text_as_jpg": lambda path: path.write_text("this is not an image\n"),
    "html_as_jpg": lambda path: path.write_text("<html><body>404 Not Found</body></html>"),
}


def _grayscale(path):
    path = path.with_suffix(".png")
    assert cv2.imwrite(str(path), face(3)[..., 0])
    return path


def _rgba(path):
    path = path.with_suffix(".png")
    image = np.concatenate([face(4), np.full((*CROP, 1), 255, np.uint8)], axis=-1)
    assert cv2.imwrite(str(path), image)
    return path


def _sixteen_bit(path):
    path = path.with_suffix(".png")
    assert cv2.imwrite(str(path), face(5).astype(np.uint16) * 257)
    return path


def _grayscale_jpeg(path):
    assert cv2.imwrite(str(path), face(6)[..., 0])
    return path


UNUSUAL_IMAGES = {
    "grayscale_png": _grayscale,
    "grayscale_jpeg": _grayscale_jpeg,
    "rgba_png": _rgba,
    "16bit_png": _sixteen_bit,
}


def write_identity_folder(root, identities=3, images_each=4, size=CROP):
    """ROOT/person_i/j.jpg: noisy copies of one random face per identity (aligned crops)."""
    rng = np.random.default_rng(0)
    for identity in range(identities):
        base = face(100 + identity, size).astype(np.float32)
        for j in range(images_each):
            noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            write_rgb(pathlib.Path(root) / f"person_{identity}" / f"{j}.jpg", noisy)
    return pathlib.Path(root)
