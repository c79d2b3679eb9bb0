"""bench/device_lfw_sweep.py: the pack travels to the GPU machine byte for byte, and the sweep
runs there on the JAX backend with TensorFlow absent from the import path (as on that
machine, whose image has no TensorFlow), on a tiny LFW-shaped data set."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = str(REPO_ROOT / "bench" / "device_lfw_sweep.py")
# a sitecustomize that hides TensorFlow (and its extras) from every import and find_spec,
# without leaving a trace in sys.modules: the GPU machine's situation
WITHOUT_TENSORFLOW = '''
import sys
from importlib.machinery import PathFinder

HIDDEN = ("tensorflow", "tensorboard", "tensorflow_serving", "ai_edge_litert", "mtcnn")


class WithoutTensorFlow(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(PathFinder)] = WithoutTensorFlow
'''


@pytest.fixture(scope="module")
def tiny_lfw(tmp_path_factory):
    """An LFW-shaped set: pairs.txt of 10 folds of 1 matched + 1 mismatched pair (3 people
    per fold) and 112x96 crops of those 30 people and 4 people in no pair, 2 images each."""
    root = tmp_path_factory.mktemp("tiny_lfw")
    aligned = root / "aligned_112x96"
    rng = np.random.default_rng(0)
    lines = ["10 1"]
    for fold in range(10):
        lines += [f"Same_{fold} 1 2", f"Left_{fold} 1 Right_{fold} 2"]
    people = [f"{kind}_{fold}" for fold in range(10) for kind in ("Same", "Left", "Right")]
    for name in people + [f"Nobody_{i}" for i in range(4)]:
        (aligned / name).mkdir(parents=True)
        face = rng.integers(0, 256, (112, 96, 3))
        for number in (1, 2):
            noisy = np.clip(face + rng.normal(0, 20, face.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(aligned / name / f"{name}_{number:04d}.jpg"), noisy)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_pack_holds_pairs_and_the_crops_byte_for_byte(tiny_lfw, tmp_path):
    pack = tmp_path / "pack.tar.gz"
    done = subprocess.run(
        [sys.executable, SCRIPT, "pack", "--lfw-dir", str(tiny_lfw), "--aligned-dir",
         str(tiny_lfw / "aligned_112x96"), "--pack", str(pack), "--wheels", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with tarfile.open(pack) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    crops = sorted(str(p.relative_to(tiny_lfw)) for p in tiny_lfw.glob("aligned_112x96/*/*"))
    assert sorted(members) == sorted(["pairs.txt"] + crops) and len(crops) == 68
    for name in ["pairs.txt"] + crops:
        assert members[name] == (tiny_lfw / name).read_bytes(), name
    assert os.listdir(tmp_path) == ["pack.tar.gz"]  # no temporary left behind


def test_pack_without_crops_names_the_folder(tiny_lfw, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, SCRIPT, "pack", "--lfw-dir", str(tiny_lfw), "--aligned-dir",
         str(empty), "--pack", str(tmp_path / "pack.tar.gz"), "--wheels", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    expected = ("Expected identity sub-folders holding .jpg/.jpeg/.png images. "
                f"Received: {str(empty)!r}")
    assert expected in done.stderr
    assert not (tmp_path / "pack.tar.gz").exists()


@pytest.mark.slow
def test_run_sweeps_on_jax_without_tensorflow(tiny_lfw, tmp_path):
    pack, work, out, site = (tmp_path / name for name in ("pack.tar.gz", "work", "out", "site"))
    subprocess.run([sys.executable, SCRIPT, "pack", "--lfw-dir", str(tiny_lfw), "--aligned-dir",
                    str(tiny_lfw / "aligned_112x96"), "--pack", str(pack), "--wheels", ""],
                   check=True, capture_output=True, timeout=120)
    out.mkdir()  # the repository's file holds LFW's 600 pairs a fold: start from an empty one
    (out / "lfw_identity_disjoint.json").write_text('{"recipes": {}}')
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_TENSORFLOW)
    env = dict(os.environ, PYTHONPATH=str(site), KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, SCRIPT, "run", "--pack", str(pack), "--work", str(work), "--out",
         str(out), "--minutes", "5", "--jobs", "2", "--", "--configs", "softmax,cosface",
         "--folds", "0",
         "--backbone", "sphere4", "--width-multiplier", "0.125", "--embedding-dim", "8",
         "--epochs", "1", "--batch-size", "8", "--learning-rate", "0.01"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "lfw_identity_disjoint.json").read_text())
    recipe = next(r for key, r in results["recipes"].items()
                  if "backbone=sphere4" in key and "mixed_precision=bfloat16" in key)
    assert sorted(recipe["runs"]) == ["cosface", "softmax"]  # one each from the two jobs
    for name in ("softmax", "cosface"):
        run = recipe["runs"][name]["0"]
        assert run["device"] == "jax on cpu"
        assert len(run["scores"]) == 2 and all(-1 <= s <= 1 for s in run["scores"])
    # trained on everyone but fold 0's 3 people: 31 identities, 62 crops
    header = (work / "runs" / "train_fold0.txt").read_text().splitlines()[0]
    assert header == "# LFW crops of the 31 identities absent from fold 0"
    table = (out / "lfw_identity_disjoint.md").read_text()
    assert "| softmax |" in table and "| cosface |" in table  # the last job's table has both
    log = (out / "sweep.log").read_text()
    assert "[job 0] == softmax, fold 0 ==" in log and "[job 1] == cosface, fold 0 ==" in log
