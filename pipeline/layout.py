"""The record of a job's shards: what a shard is, and the job's ``shards.json`` document.

Every run (in this process or on a Dask cluster) keeps its progress per shard: a whole file,
or a range of row groups of a Parquet file (pipeline/shards.py cuts them). Each shard has its
own checkpoint job, ``<job>.shard-<sid>``; the job's own directory holds ``state.json`` (the
mapping fingerprint and time window, no files) and ``shards.json`` (this module): for every
file its identity and row-group ranges, and for every shard the totals the driver last saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from connectors.checkpoint import CheckpointStore, FileProgress
from moesif_backfill.errors import CheckpointError

LAYOUT_DOC = "shards.json"


@dataclass(frozen=True)
class Shard:
    """One unit of work: a file, or row groups [a, b) of a Parquet file."""

    index: int  # position in this run's list of shards
    file_index: int  # position of the file in Plan.files
    key: str  # the file's checkpoint key (SourceFile.key)
    row_groups: tuple[int, int] | None  # None: the whole file
    first_row: int  # the file's row (0-based) the shard starts at
    rows: int | None  # rows in the shard; None: not known before reading (CSV, NDJSON)

    @property
    def sid(self) -> str:
        """Stable name of the shard: a hash of the file key and the row-group range."""
        text = self.key if self.row_groups is None else f"{self.key}\n{self.row_groups}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def job(self, job: str) -> str:
        """The shard's own checkpoint job."""
        return f"{job}.shard-{self.sid}"

    def describe(self) -> str:
        if self.row_groups is None:
            return self.key
        a, b = self.row_groups
        return f"{self.key} row groups {a}..{b - 1}"


class ShardTotals(BaseModel):
    """A shard's totals as its checkpoint had them when the driver last heard of it."""

    model_config = ConfigDict(extra="forbid")

    rows_sent: int = Field(default=0, ge=0)
    rows_rejected: int = Field(default=0, ge=0)
    rows_outside_window: int = Field(default=0, ge=0)
    complete: bool = False  # every chunk committed (rows may still be deferred)
    # Rows left pending as too old (--skip-older-than-30-days); stored only when non-zero, so
    # layouts without them stay readable by versions that do not know the field.
    rows_deferred: int = Field(default=0, ge=0)

    @model_serializer(mode="wrap")
    def _omit_zero_deferred(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("rows_deferred"):
            data.pop("rows_deferred", None)
        return data

    @classmethod
    def of(cls, prog: FileProgress) -> ShardTotals:
        """The totals of a shard's checkpoint progress."""
        return cls(
            rows_sent=prog.rows_sent,
            rows_rejected=prog.rows_rejected,
            rows_outside_window=prog.rows_outside_window,
            complete=prog.complete,
            rows_deferred=prog.rows_deferred,
        )

    @property
    def delivered(self) -> bool:
        """Every chunk committed and no row left pending as too old."""
        return self.complete and not self.rows_deferred

    @property
    def rows_done(self) -> int:
        return self.rows_sent + self.rows_rejected + self.rows_outside_window + self.rows_deferred


class FileShards(BaseModel):
    """How one file was cut: its identity then, and its row-group ranges (None: one shard)."""

    model_config = ConfigDict(extra="forbid")

    identity: dict[str, int | str]
    row_groups: list[tuple[int, int]] | None = None
    rows: list[int] | None = None  # rows of each range


class ShardLayout(BaseModel):
    """The ``shards.json`` document of a job."""

    model_config = ConfigDict(extra="forbid")

    layout_version: int = 1
    files: dict[str, FileShards] = Field(default_factory=dict)
    shards: dict[str, ShardTotals] = Field(default_factory=dict)  # by Shard.sid

    def all_complete(self, shards: Sequence[Shard], *, deferred_ok: bool = False) -> bool:
        """Whether every one of `shards` is recorded complete (and, unless `deferred_ok`, has
        no row left pending as too old)."""
        return all(
            (t := self.shards.get(s.sid)) is not None
            and t.complete
            and (deferred_ok or not t.rows_deferred)
            for s in shards
        )

    def shards_of(self, key: str, file_index: int = 0) -> list[Shard]:
        rec = self.files[key]
        if rec.row_groups is None:
            return [Shard(0, file_index, key, None, 0, rec.rows[0] if rec.rows else None)]
        rows = rec.rows or [0] * len(rec.row_groups)
        out, first = [], 0
        for (a, b), n in zip(rec.row_groups, rows, strict=True):
            out.append(Shard(0, file_index, key, (a, b), first, n))
            first += n
        return out

    def complete_files(self, *, deferred_ok: bool = False) -> dict[str, dict[str, int | str]]:
        """The files whose every shard is recorded complete (`all_complete`), with their
        identity then."""
        return {
            key: rec.identity
            for key, rec in self.files.items()
            if self.all_complete(self.shards_of(key), deferred_ok=deferred_ok)
        }

    def rows_deferred(self, key: str) -> int:
        """Rows of file `key` left pending as too old by earlier runs."""
        return sum(
            t.rows_deferred
            for s in self.shards_of(key)
            if (t := self.shards.get(s.sid)) is not None
        )


def load_layout(store: CheckpointStore, job: str) -> ShardLayout:
    """The job's shard layout (empty when the job has none yet)."""
    body = store.read_document(job, LAYOUT_DOC)
    if body is None:
        return ShardLayout()
    try:
        return ShardLayout.model_validate(body)
    except ValidationError as exc:
        raise CheckpointError(
            f"{store.describe()}/{job}/{LAYOUT_DOC} is not a shard layout this version can read "
            f"({exc.error_count()} error(s)); upgrade moesif-backfill, or rerun with --reset"
        ) from None


def save_layout(store: CheckpointStore, job: str, layout: ShardLayout) -> None:
    store.write_document(job, LAYOUT_DOC, layout.model_dump(mode="json"))


__all__ = [
    "LAYOUT_DOC",
    "FileShards",
    "Shard",
    "ShardLayout",
    "ShardTotals",
    "load_layout",
    "save_layout",
]
