"""Local input files: expanding files, directories and globs, and their `SourceFile`s.

    local_data_files(spec) -> list[str]       the data files a file/directory/glob names
    expand_spec(spec) -> Iterator[str]         the same, lazily
    no_match_message(spec) -> str
    make_source(path, options) -> SourceFile   format detection + size and mtime

Hidden and bookkeeping names (``.x``, ``_SUCCESS``, ``_committed_*``, ``*.crc``) inside a
directory or below a glob's literal root are not data; a directory is taken recursively.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

from connectors.formats import detect_format
from connectors.source_file import SourceFile, is_ignored_name
from moesif_backfill.errors import SourceError
from transforms.source_options import SourceOptions


def local_data_files(spec: str) -> list[str]:
    """The data files a local input `spec` (file, directory, glob) names, as discovery sees
    them: hidden, '_'-prefixed and *.crc files are not data. Empty when it names none."""
    return list(expand_spec(spec))


def expand_spec(spec: str) -> Iterator[str]:
    if "://" in spec:
        raise SourceError(
            f"Input {spec!r}: only local paths are supported here; give a local path."
        )
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        root = _literal_root(expanded)
        dirs: list[str] = []
        for match in glob.glob(expanded, recursive=True):
            path = os.path.abspath(match)
            rel = os.path.relpath(path, root)
            if any(is_ignored_name(part) for part in rel.split(os.sep) if part not in ("", ".")):
                continue
            if os.path.isdir(path):
                dirs.append(path)
            elif os.path.isfile(path):
                yield path
        walked: list[str] = []  # a "**" pattern matches nested dirs: walk each tree once
        for path in sorted(dirs):
            if not any(path.startswith(w.rstrip(os.sep) + os.sep) for w in walked):
                walked.append(path)
                yield from _walk(path)
    elif os.path.isdir(expanded):
        yield from _walk(os.path.abspath(expanded))
    elif os.path.isfile(expanded):
        yield os.path.abspath(expanded)


def _walk(top: str) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not is_ignored_name(name) and os.path.isfile(path):
                yield path


def _literal_root(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split(os.sep)
    literal: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    root = os.sep.join(literal) or ("" if not pattern.startswith(os.sep) else os.sep)
    return os.path.abspath(root or ".")


def no_match_message(spec: str) -> str:
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        return (
            f"Input pattern {spec!r} matched no data files (hidden, '_'-prefixed and *.crc files "
            "are skipped); check the pattern and quote it so the shell does not expand it."
        )
    if os.path.isdir(expanded):
        return (
            f"Input directory {spec!r} contains no data files (hidden, '_'-prefixed and *.crc "
            "files are skipped); check the path."
        )
    return (
        f"Input {spec!r} does not exist (relative paths are resolved from {os.getcwd()}); "
        "check the path."
    )


def make_source(path: str, options: SourceOptions | None) -> SourceFile:
    fmt, compression = detect_format(path, options)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the file's metadata ({exc}).") from exc
    return SourceFile(path, fmt, compression, st.st_size, st.st_mtime_ns)
