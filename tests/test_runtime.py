"""keras_sphereface.runtime: the machine a timing ran on, as recorded with the figures."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from keras_sphereface.runtime import cpu_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _described(**env):
    """device_description() in a fresh interpreter (the backend and oneDNN are fixed at import)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    code = "from keras_sphereface.runtime import device_description; print(device_description())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=300)
    return done.stdout.strip().splitlines()[-1]


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                       "model name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu avx2\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13 64-Core Processor"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n")  # Arm
    fallback = platform.processor() or platform.machine()
    assert cpu_model(cpuinfo) == fallback
    assert cpu_model(tmp_path / "absent") == fallback


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_a_tensorflow_cpu_run_names_its_cores_and_whether_it_ran_onednn(onednn):
    """The same recipe takes ~1.2x longer without oneDNN: the description says which."""
    described = _described(KERAS_BACKEND="tensorflow", TF_ENABLE_ONEDNN_OPTS=onednn)
    assert described.startswith(f"tensorflow on CPU ({cpu_model()}, {os.cpu_count()} cores")
    assert described.endswith(", oneDNN)") == (onednn == "1"), described


def test_a_jax_run_names_its_device_kind():
    pytest.importorskip("jax")
    assert _described(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu") == "jax on cpu"
