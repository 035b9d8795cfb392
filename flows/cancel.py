"""Marking a flow run Cancelled through the Prefect client (the CLI, after Ctrl-C/SIGTERM)."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES
from prefect.states import Cancelled

CANCELLED_MESSAGE = (
    "interrupted (Ctrl-C or SIGTERM): the checkpoint holds every acknowledged chunk; rerun to "
    "resume"
)


def cancel_flow_run(flow_run_id: str, message: str = CANCELLED_MESSAGE) -> None:
    """Set flow run `flow_run_id` Cancelled (forced: whatever state it is in now), then its
    unfinished nested flow runs (the days of a nightly sync or a date range)."""
    parent = UUID(flow_run_id)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(parent, Cancelled(message=message), force=True)
        unfinished = FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=list(TERMINAL_STATES))),
        )
        for child in client.read_flow_runs(flow_run_filter=unfinished):
            client.set_flow_run_state(child.id, Cancelled(message=message), force=True)


__all__ = ["CANCELLED_MESSAGE", "cancel_flow_run"]
