"""The GPU recipe of the LFW identity-disjoint table on a machine with no TensorFlow, no
network and no ../shared (this project's lent GPU machine): pack here, run there, merge here.

    # here: the aligned crops (an earlier sweep's OUTPUT/aligned_112x96, 51 MiB gzipped) and
    # pairs.txt into .data/lfw_aligned.tar.gz, and the wheels that machine lacks (keras, namex,
    # optree for CPython 3.12) into .whl/: 54 MiB of the 64 MiB a call carries
    python bench/device_lfw_sweep.py pack --lfw-dir ../shared/data/lfw \\
        --aligned-dir runs/lfw_disjoint_cpu/aligned_112x96
    # there (device run, carry [".data", ".whl"], timeout_s 600):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \\
        PYTHONUNBUFFERED=1 python3 bench/device_lfw_sweep.py run --minutes 6
    # here: add the runs it recorded to examples/results/ (FILES_AT: the run's files_at)
    python examples/lfw_identity_disjoint.py --lfw-dir ../shared/data/lfw \\
        --merge FILES_AT/lfw_identity_disjoint.json

`run` unpacks the pack into --work, starts from a copy of the repository's results file
(so the runs recorded already are skipped), and runs examples/lfw_identity_disjoint.py on
the Keras JAX backend with the README's GPU recipe (sphere20, 30 epochs, bfloat16, jitter
0.05), its results file, Markdown table and log in $OUT (they come back even when the call
is cut short). `--minutes` is the sweep's --max-minutes: no run starts after it, so it must
leave one run's time before the call's limit. `--jobs N` runs N sweeps side by side on the GPU,
the configs dealt out among them, recording into the one results file (locked): a small
network at batch 256 leaves most of an H200 idle (how many jobs pay is not measured yet).
Arguments after `--` go to the sweep and override the recipe (a CPU check of this flow:
`run --out /tmp/out -- --smoke`).
"""

import argparse
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time

import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_sphereface.atomic import atomic_path  # noqa: E402
from keras_sphereface.data import scan_identity_folder  # noqa: E402
from keras_sphereface.errors import UserInputError  # noqa: E402
from keras_sphereface.evaluation.lfw import LFW_PAIRS, resolve_lfw_dir  # noqa: E402

SWEEP = os.path.join(ROOT, "examples", "lfw_identity_disjoint.py")
RESULTS = os.path.join(ROOT, "examples", "results", "lfw_identity_disjoint.json")
ALIGNED = "aligned_112x96"
# the README's GPU recipe (the jitter is the CPU recipe's best augmentation)
GPU_RECIPE = ["--configs", "all", "--backbone", "sphere20", "--epochs", "30",
              "--mixed-precision", "bfloat16", "--jitter", "0.05"]
# what the GPU machine's image lacks to run Keras (its numpy, h5py, ml-dtypes, rich, absl-py,
# opencv-python-headless and scikit-learn serve)
WHEELS = ("keras", "namex", "optree")
CARRY_LIMIT = 64 * 2**20


def pack(args):
    """The crops (as they are, or re-encoded at `args.quality`) and pairs.txt into one
    gzipped tar; the wheels into args.wheels."""
    pairs_path = resolve_lfw_dir(args.lfw_dir, images=False) / LFW_PAIRS
    crops = scan_identity_folder(args.aligned_dir).paths  # what the sweep will index there
    os.makedirs(os.path.dirname(os.path.abspath(args.pack)), exist_ok=True)
    with atomic_path(args.pack) as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        tar.add(pairs_path, arcname=LFW_PAIRS)
        for relpath in crops:
            path = os.path.join(args.aligned_dir, relpath)
            if args.quality is None:
                tar.add(path, arcname=f"{ALIGNED}/{relpath}")
                continue
            image = cv2.imread(path)
            if image is None:
                raise UserInputError(f"Expected a readable image. Received: {path}")
            _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, args.quality])
            info = tarfile.TarInfo(f"{ALIGNED}/{relpath}")
            info.size, info.mtime = len(encoded), time.time()
            tar.addfile(info, fileobj=io.BytesIO(encoded.tobytes()))
    size = os.path.getsize(args.pack)
    how = "as they are" if args.quality is None else f"at JPEG quality {args.quality}"
    print(f"{args.pack}: {len(crops)} crops {how} and {pairs_path}, {size / 2**20:.1f} MiB")
    if args.wheels:
        os.makedirs(args.wheels, exist_ok=True)
        for name in WHEELS:  # the versions installed here, which the tests ran with
            spec = f"{name}=={importlib.metadata.version(name)}"
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--only-binary=:all:", "--python-version", "3.12",
                            "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                            "--platform", "manylinux_2_17_x86_64", "--platform",
                            "manylinux2014_x86_64", "-d", args.wheels, spec], check=True)
        size += sum(os.path.getsize(os.path.join(args.wheels, f)) for f in os.listdir(args.wheels))
        print(f"{args.wheels}: {', '.join(sorted(os.listdir(args.wheels)))}")
    print(f"carried: {size / 2**20:.1f} MiB of the {CARRY_LIMIT / 2**20:.0f} MiB a call takes "
          "(the working tree counts too)")
    if size > CARRY_LIMIT:
        raise SystemExit(f"Error: {size / 2**20:.1f} MiB is over the limit; pack with a "
                         "--quality (92 made LFW's 50.7 MiB of crops 42.6 MiB)")


def run(args, sweep_args):
    """Unpack, then the sweep with the GPU recipe (in args.jobs processes sharing the GPU, the
    configs dealt out among them); results, table and log into args.out."""
    if not os.path.isfile(args.pack):
        raise UserInputError(f"Expected the pack made by `pack` (carry .data). "
                             f"Received: {args.pack}, which does not exist")
    if args.jobs < 1:
        raise UserInputError(f"Expected --jobs of 1 or more. Received: {args.jobs}")
    os.makedirs(args.work, exist_ok=True)
    with tarfile.open(args.pack) as tar:
        tar.extractall(args.work, filter="data")
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, os.path.basename(RESULTS))
    if os.path.isfile(RESULTS) and not os.path.isfile(results):
        shutil.copyfile(RESULTS, results)
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    environment.setdefault("KERAS_BACKEND", "jax")
    if args.jobs > 1:  # JAX takes 75 % of the GPU's memory per process unless told
        environment.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.jobs:.2f}")
    processes, lock = [], threading.Lock()
    with open(os.path.join(args.out, "sweep.log"), "w", encoding="utf-8") as log:
        for job in range(args.jobs):
            command = [
                sys.executable, SWEEP, "--lfw-dir", args.work,
                "--aligned-dir", os.path.join(args.work, ALIGNED),
                "--output", os.path.join(args.work, "runs"), "--results", results,
                "--max-minutes", str(args.minutes), "--shard", f"{job}/{args.jobs}",
            ] + GPU_RECIPE + sweep_args
            print(f"[job {job}] {' '.join(command)}", flush=True)
            process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            thread = threading.Thread(target=_tee, args=(process, f"[job {job}] ", log, lock))
            thread.start()
            processes.append((process, thread))
        for process, thread in processes:
            thread.join()
    failed = [process.returncode for process, _ in processes if process.wait()]
    if failed:
        raise SystemExit(failed[0])


def _tee(process, prefix, log, lock):
    for line in process.stdout:
        with lock:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()
            log.write(prefix + line)
            log.flush()


def main():
    argv = sys.argv[1:]
    sweep_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="here: crops and pairs.txt into one tar, wheels")
    packing.add_argument("--lfw-dir", default=None, help="holds pairs.txt (default: $LFW_DIR)")
    packing.add_argument("--aligned-dir", required=True)
    packing.add_argument("--quality", type=int, default=None,
                         help="re-encode the crops at this JPEG quality (a smaller pack)")
    packing.add_argument("--wheels", default=os.path.join(ROOT, ".whl"),
                         help="folder for the wheels ('' for none)")
    running = commands.add_parser("run", help="there: unpack and run the sweep")
    running.add_argument("--minutes", type=float, default=6.0,
                         help="the sweep's --max-minutes")
    running.add_argument("--jobs", type=int, default=1,
                         help="sweeps in parallel on the one GPU, the configs dealt out")
    running.add_argument("--work", default="/tmp/lfw_sweep")
    running.add_argument("--out", default=os.environ.get("OUT", "out"))
    for command in (packing, running):
        command.add_argument("--pack", default=os.path.join(ROOT, ".data", "lfw_aligned.tar.gz"))
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args)
    else:
        run(args, sweep_args)


if __name__ == "__main__":
    try:
        main()
    except UserInputError as error:
        raise SystemExit(f"Error: {error}") from None
