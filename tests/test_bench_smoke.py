"""The training benches stay runnable: `bench/train_throughput.py --smoke` on the current
backend (KERAS_BACKEND) and `bench/cpu_train.py --smoke` (TensorFlow, XLA on and off), each in
a real process; no timing assertion, only that they train and report a rate (and the FLOP
count the MFU uses)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_training_gflop_per_image():
    """3 × forward FLOP of sphere20 at 1/8 width (8, 16, 32, 64 channels), 112×96 input,
    512-d fc5 and 100 classes, written out from the architecture (SphereFace Table 2)."""
    height, width, channels_in, forward = 112, 96, 3, 0
    for channels, units in zip((8, 16, 32, 64), (1, 2, 4, 1)):
        height, width = height // 2, width // 2  # 3x3 stride-2 convolution with padding 1
        forward += 2 * height * width * 9 * channels_in * channels
        forward += units * 2 * (2 * height * width * 9 * channels * channels)
        channels_in = channels
    forward += 2 * (height * width * channels_in) * 512 + 2 * 512 * 100
    return 3 * forward / 1e9


def run_smoke(script, timeout, **env):
    """`bench/SCRIPT --smoke` in a fresh interpreter; its stdout, once it exits 0."""
    done = subprocess.run(
        [sys.executable, os.path.join("bench", script), "--smoke"], cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env), capture_output=True, text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.multi_backend
def test_train_throughput_smoke_reports_a_rate():
    stdout = run_smoke("train_throughput.py", timeout=300)
    match = re.search(r"^ours: ([0-9.]+) img/s .*\(([0-9.]+) GFLOP/img\), final loss ([0-9.]+)",
                      stdout, re.MULTILINE)
    assert match, stdout
    img_per_s, gflop, loss = (float(value) for value in match.groups())
    assert img_per_s > 0
    assert gflop == pytest.approx(smoke_training_gflop_per_image(), abs=0.005)
    assert 0 < loss < 50  # finite: the step trained


@pytest.mark.slow
def test_cpu_train_smoke_reports_every_head_with_and_without_xla():
    stdout = run_smoke("cpu_train.py", timeout=600, KERAS_BACKEND="tensorflow")
    heads = ("plain softmax (Dense)", "MarginSoftmax (A-Softmax)", "MarginSoftmax, BN backbone")
    rows = re.findall(r"^(plain softmax \(Dense\)|MarginSoftmax \(A-Softmax\)|MarginSoftmax, BN backbone)"
                      r" +(on|off) +([0-9.]+)", stdout, re.MULTILINE)
    assert sorted((head, xla) for head, xla, _ in rows) == sorted(
        (head, xla) for head in heads for xla in ("off", "on")), stdout
    assert all(float(speed) > 0 for _, _, speed in rows)
