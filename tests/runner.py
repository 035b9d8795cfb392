"""Run the pipeline in-process for tests: what the Prefect flow does, without Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.report import RunSummary
from pipeline.run import Run
from pipeline.settings import RunSettings
from tests.datasets import write_mapping


def run_plain(settings: RunSettings) -> tuple[RunSummary, BaseException | None]:
    """What the Prefect flow does, without Prefect: prepare, every file, finish."""
    run = Run(settings)
    error: BaseException | None = None
    try:
        plan = run.prepare()
        for i in range(len(plan.files)):
            run.process_file(i)
    except Exception as exc:
        error = exc
    return run.finish(error), error


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
