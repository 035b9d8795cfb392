"""Per-file layout facts: what discovery learnt about one input file from where it was found.

`FileLayout` holds Hive partition values from the file's directories, the delimiter sniffed
from its content, and the record count a manifest promises for it. (How files are read, the
mapping's `source:` section, is `transforms.source_options.SourceOptions`.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileLayout:
    """Facts about one input file learnt from where and how it was found."""

    # Hive-style `key=value` directories between the input root and the file, outermost first
    # (value None for Hive's null marker `__HIVE_DEFAULT_PARTITION__`).
    partitions: tuple[tuple[str, str | None], ...] = ()
    # The delimiter sniffed from the content of a CSV whose name says nothing ("|" for a
    # Redshift part); None: the `source:` delimiter or ",".
    delimiter: str | None = None
    # Set for a file listed in a manifest: the manifest and the record count it states.
    manifest: str | None = None
    expected_rows: int | None = None

    def partition_values(self) -> dict[str, str | None]:
        return dict(self.partitions)


NO_LAYOUT = FileLayout()
