"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; when the block ends without error it
    replaces ``path`` in one rename, else it is removed. The name is per process, so parallel
    jobs (or test workers) that share a cache never write into each other's file, and a kill
    mid-write leaves the previous ``path`` (or none) intact."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.partial{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
