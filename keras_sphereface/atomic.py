"""Write files and directories so that a crash never leaves a half-written result.

Everything the project writes that a user would lose sleep over (checkpoints, exports,
aligned crops, reports, caches) goes through these two helpers: the content is written to a
temporary name in the same directory, flushed, and then renamed over the final name, which is
atomic on POSIX file systems. A kill at any moment leaves either the old file or the new one.
"""

import contextlib
import os
import re
import shutil
import tempfile

# What atomic_path names its temporary files: ".{base}.{random}.tmp{ext}"
_TEMPORARY_FILE = re.compile(r"^\..+\.[^.]+\.tmp(\.[^.]*)?$")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success rename it to `path`.

    The caller writes the file at the yielded path (any writer that takes a path works,
    e.g. `model.save`, `np.savez`, `cv2.imwrite`). On an exception the temporary file is
    removed and `path` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode a plain open() would (readers such as
    # TF Serving often run as another user).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yield a temporary directory beside `path`; on success rename it to `path`.

    If `path` exists and `overwrite` is False, raise FileExistsError before anything is
    written. With `overwrite=True` the old directory is replaced only once the new one is
    complete (it is moved aside, the new one renamed in, then the old one deleted).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Expected a path that does not exist yet (pass overwrite=True to replace it). "
            f"Received: {path}"
        )
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700, as for atomic_path's file
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(directory):
    """Delete the temporary files a killed `atomic_path` writer left below `directory`.

    Call it when resuming work in a folder (an interrupted checkpoint or crop write leaves a
    hidden `.{base}.{random}.tmp{ext}` file beside the intact previous version).
    """
    for folder, _, files in os.walk(directory):
        for name in files:
            if _TEMPORARY_FILE.match(name):
                os.remove(os.path.join(folder, name))
