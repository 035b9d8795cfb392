"""TRANSITIONAL shim, to be deleted together with the Dask special case in flows/backfill.py and
moesif_backfill/cli.py: `pipeline.job.run_job` runs shards on Dask itself now (pipeline/runners.py
`DaskRunner`, plain Dask, no Prefect task runner)."""

from __future__ import annotations

from typing import Any

from pipeline.job import run_job
from pipeline.settings import RunSettings


def run_on_dask(settings: RunSettings) -> dict[str, Any]:
    """`run_job` for the flow's Dask branch: the summary, or the error raised."""
    from flows import backfill as flow_module  # noqa: PLC0415 - the caller's module

    outcome = run_job(settings, progress=list(getattr(flow_module, "_listeners", [])))
    last = getattr(flow_module, "LAST_SUMMARY", None)  # the pre-run_job CLI reads it
    if isinstance(last, dict):
        last.clear()
        last.update(outcome.summary.to_dict())
    if outcome.error is not None:
        raise outcome.error
    return outcome.summary.to_dict()


__all__ = ["run_on_dask"]
