"""Two durable-write primitives every file writer here shares: a whole write, and a directory
fsync. Standard library only, so a command-line tool that starts per use (zcp, zrsh) can
import it without loading anything else.

    from cluster_patterns.file_io import fsync_directory, write_all
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd``: ``os.write`` may take less than it is given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make a new directory entry durable (a fsynced file can vanish with its entry)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
