"""Marking a flow run Cancelled through the Prefect client (the CLI, after Ctrl-C/SIGTERM)."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.states import Cancelled

CANCELLED_MESSAGE = (
    "interrupted (Ctrl-C or SIGTERM): the checkpoint holds every acknowledged chunk; rerun to "
    "resume"
)


def cancel_flow_run(flow_run_id: str, message: str = CANCELLED_MESSAGE) -> None:
    """Set flow run `flow_run_id` Cancelled (forced: whatever state it is in now)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(flow_run_id), Cancelled(message=message), force=True)


__all__ = ["CANCELLED_MESSAGE", "cancel_flow_run"]
