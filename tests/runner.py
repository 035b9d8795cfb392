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
    its only shard, or its shards' progress put together, chunks numbered from the file's
    first row (each shard must start on a chunk boundary). None: nothing committed yet."""
    key = str(Path(src).resolve()) if "://" not in str(src) else str(src)
    store = LocalCheckpointStore(checkpoint)
    layout = load_layout(store, job)
    if key not in layout.files:
        return None
    progs = []
    for shard in layout.shards_of(key):
        state = store.load(shard.job(job))
        prog = state.files.get(key) if state is not None else None
        if prog is not None:
            progs.append((shard.first_row, prog))
    if len(progs) <= 1 and len(layout.shards_of(key)) == 1:
        return progs[0][1] if progs else None
    if not progs:
        return None
    size = progs[0][1].chunk_rows
    whole = FileProgress(identity=progs[0][1].identity, chunk_rows=size)
    for first, prog in progs:
        assert prog.chunk_rows == size and first % size == 0, (first, prog.chunk_rows)
        for a, b in prog.done:
            for chunk in range(a, b):
                whole.mark_done(first // size + chunk, sent=0, rejected=0)
        whole.rows_sent += prog.rows_sent
        whole.rows_rejected += prog.rows_rejected
        whole.rows_outside_window += prog.rows_outside_window
    return whole


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
