"""Run the pipeline in-process for tests: what the Prefect flow does, without Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connectors.checkpoint import FileProgress
from connectors.checkpoint_local import LocalCheckpointStore
from pipeline.job import run_job
from pipeline.layout import load_layout
from pipeline.report import RunSummary
from pipeline.settings import RunSettings
from tests.datasets import write_mapping


def run_plain(settings: RunSettings) -> tuple[RunSummary, BaseException | None]:
    """What the CLI and the Prefect flow do: `pipeline.job.run_job`."""
    outcome = run_job(settings)
    return outcome.summary, outcome.error


def shard_dir(checkpoint: Path | str, job: str, src: Path | str) -> Path:
    """The checkpoint directory of the only shard of local file `src` (a whole file, or one
    range of row groups) in a local checkpoint."""
    key = str(Path(src).resolve()) if "://" not in str(src) else str(src)
    layout = load_layout(LocalCheckpointStore(checkpoint), job)
    (shard,) = layout.shards_of(key)
    return Path(checkpoint) / shard.job(job)


def file_progress(checkpoint: Path | str, job: str, src: Path | str) -> FileProgress | None:
    """The progress of file `src` (a local path or an s3:// key) in a local checkpoint: that of
    its only shard (None: nothing committed yet)."""
    key = str(Path(src).resolve()) if "://" not in str(src) else str(src)
    store = LocalCheckpointStore(checkpoint)
    layout = load_layout(store, job)
    if key not in layout.files:
        return None
    (shard,) = layout.shards_of(key)
    state = store.load(shard.job(job))
    return state.files.get(key) if state is not None else None


def settings_for(tmp_path: Path, sources: list[Path], **kw: Any) -> RunSettings:
    base: dict[str, Any] = {
        "sources": [str(s) for s in sources],
        "mapping": write_mapping(tmp_path / "mapping.yaml"),
        "checkpoint": tmp_path / "ckpt",
        "job": "test-job",
        "chunk_rows": 1_000,
        "region": "us-east-1",
    }
    base.update(kw)
    return RunSettings.model_validate(base)


def strict_settings(
    tmp_path: Path, sources: list[Path], server: Any, stream: str, **kw: Any
) -> RunSettings:
    """`settings_for` sending to `stream` on the strict Firehose endpoint `server`."""
    return settings_for(tmp_path, sources, stream=stream, endpoint_url=server.endpoint_url, **kw)
