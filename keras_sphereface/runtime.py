"""What a timing ran on: the Keras backend, the accelerator, or the CPU model and its kernels.

Timings from different machines only compare when this is recorded with them: the same LFW
recipe took ~20 s an epoch on one 2-core machine and ~60 s on another. TensorFlow turns its
oneDNN kernels on by itself only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX (its 2.9 release
notes); elsewhere TF_ENABLE_ONEDNN_OPTS=1 forces them, and a sphere10 training step on a 2-core
AMD EPYC took ~1.2× longer without them.
"""

import os
import platform

import keras


def device_description():
    """Backend and device, e.g. "jax on NVIDIA H100 80GB HBM3" or "tensorflow on CPU (AMD
    EPYC, 2 cores, oneDNN)"."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        kinds = sorted({device.device_kind for device in jax.devices()})
        return f"jax on {', '.join(kinds)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"tensorflow on {len(gpus)} GPU(s)"
        onednn = ", oneDNN" if onednn_enabled() else ""
        return f"tensorflow on CPU ({cpu_model()}, {os.cpu_count()} cores{onednn})"
    return backend


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's guess."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels (a private query; False if it moves)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())
