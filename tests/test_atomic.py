"""Atomic writes: the final path appears only complete, with ordinary permissions."""

import os
import stat

import pytest

from keras_sphereface.atomic import atomic_directory, atomic_path


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_renames_on_success_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    with atomic_path(target) as tmp:
        assert not target.exists()
        with open(tmp, "wb") as f:
            f.write(b"abc")
    assert target.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target) == 0o666 & ~umask
    assert os.listdir(target.parent) == ["file.bin"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_atomic_directory_refuses_existing_and_replaces_with_overwrite(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (open(os.path.join(tmp, "a"), "w")).close()
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(target) == 0o777 & ~umask
    with pytest.raises(FileExistsError, match="Received: .*export"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (open(os.path.join(tmp, "b"), "w")).close()
    assert sorted(os.listdir(target)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["export"]
