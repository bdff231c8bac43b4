"""Values read from files that the kubelet mounts from a Secret or ConfigMap, re-read when the
files change, without a restart.

The kubelet updates such a volume by writing the new keys into a fresh directory and swapping
the `..data` symlink, so every key file then resolves to a new inode. Comparing each file's
`stat` signature on every use (a few syscalls) therefore picks an update up at once, without
re-reading unchanged files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
FileSignature = tuple[int, int, int, int, int]


def file_signature(path: Path) -> FileSignature:
    """What changes when the kubelet swaps the file (follows symlinks); raises OSError."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class MountedValue(Generic[T]):
    """`load()`'s value, loaded again only when the stat signature of one of `paths` changed.

    `signature` may raise (a missing file): that propagates, and nothing is cached. Whatever
    `load` returns is cached under the signature taken before it ran; if an update lands in
    between, the next use sees a newer signature and loads again, instead of keeping the older
    content under the newer signature."""

    def __init__(
        self,
        paths: Sequence[Path],
        load: Callable[[], T],
        signature: Callable[[Path], FileSignature] = file_signature,
    ) -> None:
        self.paths = tuple(paths)
        self._load = load
        self._signature = signature
        self._cached: tuple[tuple[FileSignature, ...], T] | None = None

    def get(self) -> T:
        signature = tuple(self._signature(path) for path in self.paths)
        if self._cached is not None and self._cached[0] == signature:
            return self._cached[1]
        value = self._load()
        self._cached = (signature, value)
        return value
