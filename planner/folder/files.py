"""Opening the files of a model folder without blocking or reading without bound: regular files only (a FIFO or a
device put where a weights file was expected is refused, never waited on), small JSON documents read up to a limit.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

# model_index.json and shard indexes: the index of a model of a thousand shards is a few MB.
MAX_JSON_BYTES = 16 * 1024 * 1024


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def open_regular(path: str | Path) -> tuple[BinaryIO, int]:
    """A regular file opened for reading, and its size; OSError for anything else. The open does not block, so a
    named pipe put where a weights file was expected is refused instead of waited on."""
    fd = os.open(path, _OPEN_FLAGS)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb"), info.st_size


def read_json(path: Path) -> tuple[object, str | None]:
    """(document, None) of a small JSON file, or (None, why it cannot be used)."""
    try:
        f, _ = open_regular(path)
        with f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc.strerror or exc}"
    if len(raw) > MAX_JSON_BYTES:
        return None, f"{path.name} is larger than {MAX_JSON_BYTES:,} bytes"
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return None, f"{path.name} is not valid JSON ({exc})"
