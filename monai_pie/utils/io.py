"""Atomic writes: a killed process never leaves a half-written checkpoint or output behind.

The data goes to a temporary file in the target's folder, is flushed to disk (fsync), and is renamed onto the target;
the folder is fsynced too, so after a crash either the old file or the complete new one is there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp's temporary files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it onto ``path``.

    ``suffix`` lets writers that infer the format from the name work (e.g. ``".tmp.nii.gz"`` for nibabel).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(path.parent)
    return path


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) data to disk; folders cannot be opened on some systems, which is fine."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
