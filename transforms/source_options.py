"""How input files are read: the mapping file's `source:` section.

`SourceOptions` is the validated `source:` section of the mapping file (see
docs/warehouse-exports.md). Its defaults are the behaviour without a `source:` section, so
callers that pass no options read files exactly as before:

    format       parquet | csv | ndjson        default: detected by name, then by content
    delimiter    one character (CSV)           default: ","; "|" detected for files whose name
                                               says nothing (Redshift `0000_part_00`)
    header       bool (CSV)                    default: true; false needs `columns`
    columns      [names] (headerless CSV)      implies header: false when header is not given
    compression  gzip | zstd | none | auto     default: auto (magic bytes, then the name)
    null_values  [strings] (CSV)               null in addition to the empty unquoted field
    encoding     a Python codec name (CSV)     default: utf-8; other encodings are transcoded
    manifest     bool                          true: every input given is a manifest (a JSON
                                               list of the files to read); default: a file
                                               named `manifest`, `*.manifest`, `*_manifest` with
                                               the manifest's JSON shape is one

It is part of the mapping (and of its fingerprint), so it lives beside it in `transforms`; the
readers in `connectors` take it from here.
"""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FormatName = Literal["parquet", "csv", "ndjson"]


class SourceOptions(BaseModel):
    """The `source:` section of a mapping file (all fields optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: FormatName | None = None
    delimiter: str | None = None
    header: bool | None = None
    columns: tuple[str, ...] | None = Field(default=None, min_length=1)
    compression: Literal["gzip", "zstd", "none", "auto"] = "auto"
    null_values: tuple[str, ...] = ()
    encoding: str = "utf-8"
    manifest: bool | None = None

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) != 1:
            raise ValueError(f"must be exactly one character, e.g. ',' or '|' (got {v!r})")
        if v in '\r\n"':
            raise ValueError("cannot be a line break or a double quote")
        return v

    @field_validator("columns")
    @classmethod
    def _unique(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        empty = [i + 1 for i, name in enumerate(v) if not name]
        if empty:
            raise ValueError(f"column names must not be empty (position {empty[0]})")
        repeated = sorted({name for name in v if v.count(name) > 1})
        if repeated:
            raise ValueError(f"column names must be unique; repeated: {repeated}")
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            return codecs.lookup(v).name
        except LookupError:
            raise ValueError(
                f"unknown encoding {v!r} (e.g. 'utf-8', 'latin-1', 'cp1252', 'utf-16')"
            ) from None

    @model_validator(mode="after")
    def _consistent(self) -> SourceOptions:
        if self.header is False and self.columns is None:
            raise ValueError(
                "header: false needs `columns`: the names of the file's columns, in order"
            )
        if self.header is True and self.columns is not None:
            raise ValueError(
                "`columns` names the columns of a file without a header row; with header: true "
                "the names come from the header (remove `columns` or set header: false)"
            )
        text_only = {
            "delimiter": self.delimiter is not None,
            "header": self.header is not None,
            "columns": self.columns is not None,
            "null_values": bool(self.null_values),
        }
        if self.format in ("parquet", "ndjson"):
            used = [name for name, given in text_only.items() if given]
            if used:
                verb = "applies" if len(used) == 1 else "apply"
                raise ValueError(f"{', '.join(used)} {verb} only to format: csv")
        if self.format == "parquet" and self.compression in ("gzip", "zstd"):
            raise ValueError(
                "Parquet files compress internally and cannot be read gzip/zstd-compressed as a "
                "whole; remove `compression`"
            )
        return self

    # ----------------------------------------------------------------------- derived values
    @property
    def has_header(self) -> bool:
        """CSV files have a header row unless `header: false` or `columns` says otherwise."""
        return self.header if self.header is not None else self.columns is None

    @property
    def is_utf8(self) -> bool:
        return self.encoding == "utf-8"

    def csv_null_values(self) -> list[str]:
        return list(dict.fromkeys(["", *self.null_values]))

    def is_default(self) -> bool:
        return self == DEFAULT_OPTIONS


DEFAULT_OPTIONS = SourceOptions()
