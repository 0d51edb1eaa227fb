"""The blob folder: sealed payloads too large for the hot tables, one file each, written durably."""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f-]{36}\.[\w.-]+")


class BlobFolder:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ValueError("not a blob name")
        return self.root / name

    def put(self, record_id: str, part: str, sealed: bytes) -> str:
        """Write sealed bytes (already encrypted by the caller) and fsync file and folder; returns the name."""
        name = f"{record_id[-2:]}/{record_id}.{part.replace(':', '_').replace('/', '_')}"
        target = self.path(name)
        target.parent.mkdir(exist_ok=True, mode=0o700)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, sealed)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return name

    def get(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
