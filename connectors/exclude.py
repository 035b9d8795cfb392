"""`--exclude GLOB`: input files that discovery leaves out (a README beside the data...).

A pattern excludes a file when it matches the file's path relative to the input it was found
under ('/'-separated; the directory, the S3 prefix, or a glob's literal root) or its base name:
`README.txt`, `*.txt`, `docs/*`, `**/tmp/*`. `fnmatch` rules, case-sensitive: `*` also matches
'/', so `docs/*` leaves out everything under `docs/`; a leading `**/` also matches at the top.
A file named on the command line itself is matched by its base name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fnmatch import fnmatchcase


def relative_path(path: str, root: str) -> str:
    """`path` below `root` ('/'-separated), or its base name when it is not below it."""
    sep = "/" if "://" in path else os.sep
    if root and path.startswith(root) and path != root:
        rest = path[len(root) :].lstrip(sep)
        if root.endswith(sep) or path[len(root)] == sep:
            return rest.replace(sep, "/")
    return path.rstrip(sep).rsplit(sep, 1)[-1]


def is_excluded(path: str, root: str, patterns: Sequence[str]) -> bool:
    """Whether one of `patterns` excludes `path`, found under the input root `root`."""
    if not patterns:
        return False
    rel = relative_path(path, root)
    base = rel.rsplit("/", 1)[-1]
    return any(_match(rel, base, pattern) for pattern in patterns)


def _match(rel: str, base: str, pattern: str) -> bool:
    if fnmatchcase(rel, pattern) or fnmatchcase(base, pattern):
        return True
    return pattern.startswith("**/") and _match(rel, base, pattern[3:])


def all_excluded_message(spec: str, patterns: Sequence[str]) -> str:
    return (
        f"Input {spec!r}: every file it names is excluded by --exclude "
        f"{' '.join(repr(p) for p in patterns)}; check the patterns."
    )


__all__ = ["all_excluded_message", "is_excluded", "relative_path"]
