"""File primitives every command shares: atomic writes, run folders, the image file suffixes.

The bottom layer (standard library only), so ``train``, ``export`` and ``runtime`` use one
implementation of each.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Image file suffixes read everywhere (dataset splits, det-run folders/globs, parity images), lower
#: case; a tuple, so that probing ``<stem><suffix>`` candidates has a fixed order.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write a file so that readers see either the previous file or the complete new one.

    The content goes to a temporary file in the same folder (``tempfile.mkstemp``, so concurrent
    writers never share one), is flushed and ``fsync``-ed, gets permissions ``mode`` and is moved
    into place with ``os.replace`` (atomic on POSIX and Windows within one file system). If
    anything fails (including ``KeyboardInterrupt``), the temporary file is removed, ``path`` is
    left as it was and the exception propagates. Missing parent folders are created.

    Args:
        path: the destination file.
        data: the bytes to write, or a callback that writes them to the open binary file it is
            given (e.g. ``lambda f: torch.save(obj, f)``).
        mode: permission bits of the written file (``mkstemp`` creates ``0600``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """Create and return a run folder: ``path``, else ``path2``, ``path3``, ... (``runs/run/exp``,
    ``exp2``, ...: the Ultralytics convention every det-* command follows).

    Each candidate is created with ``mkdir(exist_ok=False)``, so two concurrent runs never claim the
    same folder. With ``exist_ok`` the folder ``path`` itself is used (created if missing), e.g. to
    write into an existing run again.

    Raises:
        FileExistsError: 9,999 numbered candidates all exist.
        OSError: the folder cannot be created (permissions, a file in the way).
    """
    path = Path(path)
    if exist_ok:
        path.mkdir(parents=True, exist_ok=True)
        return path
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name for {path}")


def check_writable(path: str | Path, what: str = "output folder") -> Path:
    """Check, before any work, that the folder ``path`` can be created (or written into), so that a
    command fails at once instead of after its work; nothing is created.

    The nearest existing ancestor of ``path`` must be a folder (not a file) that this process may
    write into (``os.access``; a process running as root passes that test, but never the "is a
    file" one).

    Args:
        path: the folder a command will create or write into (e.g. ``--project``/``--name``).
        what: how to name it in the message, e.g. ``"--project"``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file.
        PermissionError: the nearest existing folder is not writable.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{what} {path}: cannot write there: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: cannot write there: no write permission on {probe}")
    return path
