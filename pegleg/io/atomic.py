"""Atomic file writes: write to a temporary file in the destination folder, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "temporary_path", "temporaries", "discard"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one ``os.replace``.

    The temporary file lives next to ``path`` (same file system); on any exception,
    including ``KeyboardInterrupt``, it is removed and nothing appears under ``path``.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    return path


def temporary_path(path: str | os.PathLike) -> str:
    """A new empty file ``.<name>.<random>.tmp`` next to ``path`` (same file system, so a
    final ``os.replace`` is atomic; the pattern stale-file cleaners look for)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`temporary_path` made for ``path`` that still exist (left
    behind by a process that died while writing)."""
    import glob

    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def discard(tmp: str | os.PathLike) -> None:
    """Remove a temporary file if it still exists."""
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
