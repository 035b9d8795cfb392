"""Hive-style partition directories: ``dt=2024-03-01/region=eu/`` become column values.

The directories counted are those between the *root* of an input spec and the file:

    spec                                   root
    data/  (a directory or an S3 prefix)   data/
    data/dt=*/region=*/*.parquet           data/   (the glob's part before the first wildcard)
    data/dt=2024-03-01/part-0.parquet      data/dt=2024-03-01/   (a file: no partitions)
    a manifest                             the manifest's directory

so ``data/dt=2024-03-01/region=eu/part-0.parquet`` found under ``data/`` has the partition
columns ``dt = "2024-03-01"`` and ``region = "eu"`` (strings; a mapping may use them like any
column, e.g. ``time: {column: dt}``). Names and values are unescaped as Hive/Spark escape them
(``%3A`` -> ``:``); Hive's null marker ``__HIVE_DEFAULT_PARTITION__`` is a null value. This is
what Spark's partition discovery does without a ``basePath`` option.
"""

from __future__ import annotations

import glob
import os
from urllib.parse import unquote

from moesif_backfill.errors import SourceError

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_MAGIC = "*?["

Partitions = tuple[tuple[str, str | None], ...]


def _sep(path: str) -> str:
    return "/" if "://" in path else os.sep


def partition_root(spec: str) -> str:
    """The directory (or S3 prefix) under which `key=value` directories count for `spec`."""
    if "://" in spec:
        if any(ch in spec for ch in _MAGIC):
            head = spec[: min(spec.index(ch) for ch in _MAGIC if ch in spec)]
            return head[: head.rfind("/") + 1]
        return spec
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        literal: list[str] = []
        for part in expanded.split(os.sep)[:-1]:
            if glob.has_magic(part):
                break
            literal.append(part)
        root = os.sep.join(literal) or (os.sep if expanded.startswith(os.sep) else ".")
        return os.path.abspath(root)
    return os.path.abspath(expanded)


def partitions_of(path: str, root: str) -> Partitions:
    """The `key=value` directories of `path` below `root`, outermost first."""
    sep = _sep(path)
    if path == root or not path.startswith(root):
        return ()
    rest = path[len(root) :]
    if not root.endswith(sep) and not rest.startswith(sep):
        return ()  # `root` is a name prefix of the file, not a directory above it
    dirs = rest.strip(sep).split(sep)[:-1]
    found: dict[str, str | None] = {}
    for part in dirs:
        key, eq, value = part.partition("=")
        if not eq or not key:
            continue
        name = unquote(key)
        if name in found:
            raise SourceError(
                f"{path}: the partition key {name!r} appears twice in the file's directories; "
                "give the input at the level where each key appears once."
            )
        found[name] = None if value == HIVE_NULL else unquote(value)
    return tuple(found.items())
