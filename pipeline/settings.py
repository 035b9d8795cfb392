"""Run settings: the typed edge between the CLI (or a deployment) and the pipeline."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.send_settings import DEFAULT_CHECKPOINT_DIR, SendSettings

Mode = Literal["send", "dry-run", "validate"]
DEFAULT_REJECTS_DIR = Path(".moesif-backfill/rejects")


class RunSettings(SendSettings):
    """Everything one run needs. Holds no secret: credentials come from boto3's chain.

    The fields of where and how actions are sent, and of the checkpoint, are `SendSettings`'
    (shared with `redrive`)."""

    sources: list[str] = Field(min_length=1, description="files, directories or globs")
    mapping: Path = Field(description="the mapping YAML file")
    mode: Mode = "send"
    exclude: list[str] = Field(
        default_factory=list,
        description="glob patterns of input files to leave out, matched against the path "
        "below the given directory/prefix and against the base name (e.g. '*.txt')",
    )
    out: Path | None = Field(default=None, description="--dry-run output directory")
    dask_address: str | None = Field(
        default=None, min_length=1, description="run shards on this Dask scheduler (tcp://...)"
    )
    workers: int | None = Field(
        default=None, ge=1, le=64, description="run shards on a local Dask cluster of N processes"
    )
    window_start: dt.datetime | None = Field(
        default=None, description="send only rows whose time is >= this (time-window mode)"
    )
    window_end: dt.datetime | None = Field(
        default=None, description="send only rows whose time is < this (time-window mode)"
    )
    shards_in_flight: int = Field(
        default=8,
        ge=1,
        le=64,
        description="shards run at once by a run in one process, while their rows fit in what "
        "one shard may keep in flight (many small files side by side, big ones in turn)",
    )
    reprocess: list[str] = Field(default_factory=list)

    @field_validator("exclude")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in v):
            raise ValueError("an --exclude pattern must not be empty")
        return v

    @model_validator(mode="after")
    def _mode_needs(self) -> RunSettings:
        if self.mode == "send":
            self.check_target()
        if self.mode == "dry-run" and self.out is None:
            raise ValueError("--dry-run needs --out DIR (where the would-be records are written)")
        if self.dask_address and self.workers:
            raise ValueError("give --dask-address (an existing cluster) or --workers, not both")
        for when in (self.window_start, self.window_end):
            if when is not None and when.tzinfo is None:
                raise ValueError("window_start/window_end need a time zone (e.g. ...+00:00)")
        if self.window_start and self.window_end and self.window_start >= self.window_end:
            raise ValueError("window_start must be before window_end")
        return self


__all__ = ["DEFAULT_CHECKPOINT_DIR", "DEFAULT_REJECTS_DIR", "Mode", "RunSettings", "SendSettings"]
