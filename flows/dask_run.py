"""TRANSITIONAL shim, to be deleted once flows/backfill.py calls `pipeline.job.run_job` for
every run (H-cli): shards on Dask are run by the core (pipeline/runners.py `DaskRunner`)."""

from __future__ import annotations

from typing import Any

from flows import backfill as flow_module
from pipeline.job import run_job
from pipeline.settings import RunSettings


def run_on_dask(settings: RunSettings) -> dict[str, Any]:
    outcome = run_job(settings, progress=list(flow_module._listeners))
    flow_module.LAST_SUMMARY.clear()
    flow_module.LAST_SUMMARY.update(outcome.summary.to_dict())
    if outcome.error is not None:
        raise outcome.error
    return outcome.summary.to_dict()


__all__ = ["run_on_dask"]
