# Verbatim copy of ../shared/bench/anchor_gpu.py (the project's own anchor measurement, shared
# beside the checkout), kept here because the GPU machine's copy of the tree has no ../shared.
# Do not edit: bench/train_throughput.py --anchor runs it as `python bench/anchor_gpu.py torch`.
"""Anchor throughput on a GPU: a PyTorch SphereNet-20 (the shape users know from the
public PyTorch port) against the same network in Keras 3 on the JAX backend.
Prints one JSON line per configuration: images/s for a full training step
(forward, margin head over N classes, backward, SGD update)."""
import json, os, sys, time

BATCH = int(os.environ.get("BATCH", 256))
CLASSES = int(os.environ.get("CLASSES", 10575))
STEPS = int(os.environ.get("STEPS", 40))
WARM = int(os.environ.get("WARM", 10))
which = sys.argv[1]


def report(name, ips, extra=None):
    d = {"config": name, "batch": BATCH, "classes": CLASSES, "img_per_s": round(ips, 1)}
    d.update(extra or {})
    print(json.dumps(d), flush=True)


def torch_bench(amp, channels_last, compile_):
    import torch, torch.nn as nn, torch.nn.functional as F

    class Unit(nn.Module):
        def __init__(s, c):
            super().__init__()
            s.c1, s.p1 = nn.Conv2d(c, c, 3, 1, 1), nn.PReLU(c)
            s.c2, s.p2 = nn.Conv2d(c, c, 3, 1, 1), nn.PReLU(c)
        def forward(s, x):
            return x + s.p2(s.c2(s.p1(s.c1(x))))

    def stage(cin, cout, n):
        return [nn.Conv2d(cin, cout, 3, 2, 1), nn.PReLU(cout)] + [Unit(cout) for _ in range(n)]

    class Sphere20(nn.Module):
        def __init__(s):
            super().__init__()
            s.body = nn.Sequential(*stage(3, 64, 1), *stage(64, 128, 2), *stage(128, 256, 4), *stage(256, 512, 1))
            s.fc5 = nn.Linear(512 * 7 * 6, 512)
            s.w = nn.Parameter(torch.randn(512, CLASSES) * 0.01)
        def forward(s, x, y):
            f = s.fc5(torch.flatten(s.body(x), 1))
            cos = F.normalize(f, dim=1) @ F.normalize(s.w, dim=0)
            logits = 30.0 * (cos - 0.35 * F.one_hot(y, CLASSES))
            return F.cross_entropy(logits.float(), y)

    dev = "cuda"
    m = Sphere20().to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = m.to(memory_format=fmt)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(BATCH, 3, 112, 96, device=dev).to(memory_format=fmt)
    y = torch.randint(0, CLASSES, (BATCH,), device=dev)
    fwd = torch.compile(m) if compile_ else m
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = fwd(x, y)
        loss.backward(); opt.step()
    for _ in range(WARM): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(STEPS): step()
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    report(f"torch amp={amp} channels_last={channels_last} compile={compile_}", BATCH * STEPS / dt,
           {"torch": torch.__version__, "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)})


def keras_bench(policy):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import numpy as np, keras
    from keras import layers, ops
    keras.mixed_precision.set_global_policy(policy)

    class CosHead(layers.Layer):
        def build(s, shapes):
            s.w = s.add_weight(shape=(shapes[0][-1], CLASSES), initializer="glorot_uniform")
        def call(s, inputs):
            f, y = inputs
            cos = ops.matmul(ops.normalize(ops.cast(f, "float32"), axis=1), ops.normalize(s.w, axis=0))
            return 30.0 * (cos - 0.35 * ops.one_hot(ops.cast(y, "int32"), CLASSES))

    def conv(x, c, s):
        x = layers.Conv2D(c, 3, s, padding="same")(x)
        return layers.PReLU(shared_axes=[1, 2])(x)

    img = keras.Input((112, 96, 3), dtype="uint8"); lab = keras.Input((), dtype="int32")
    x = layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0)(img)
    for c, n in ((64, 1), (128, 2), (256, 4), (512, 1)):
        x = conv(x, c, 2)
        for _ in range(n):
            x = layers.Add()([x, conv(conv(x, c, 1), c, 1)])
    f = layers.Dense(512)(layers.Flatten()(x))
    out = layers.Activation("linear", dtype="float32")(CosHead()([f, lab]))
    model = keras.Model([img, lab], out)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    n = BATCH * (STEPS + WARM)
    xs = np.random.randint(0, 255, (n, 112, 96, 3), dtype=np.uint8)
    ys = np.random.randint(0, CLASSES, (n,), dtype=np.int32)
    class T(keras.callbacks.Callback):
        def on_train_batch_end(s, b, logs=None):
            if b == WARM - 1:
                float(logs["loss"]) if logs else None
                s.t = time.perf_counter()
        def on_train_end(s, logs=None):
            s.dt = time.perf_counter() - s.t
    t = T()
    model.fit([xs, ys], ys, batch_size=BATCH, epochs=1, verbose=0, callbacks=[t], shuffle=False)
    import jax
    report(f"keras-jax fit policy={policy}", BATCH * STEPS / t.dt, {"keras": keras.__version__, "jax": jax.__version__})


if which == "torch":
    for amp, cl, comp in ((False, False, False), (True, True, False), (True, True, True)):
        try:
            torch_bench(amp, cl, comp)
        except Exception as e:
            print(json.dumps({"config": f"torch amp={amp} cl={cl} compile={comp}", "error": repr(e)[:300]}), flush=True)
else:
    keras_bench(sys.argv[2])
