"""The job's checkpoint as a run starts: loaded (or new), checked against this run's mapping,
time window and input files (CheckpointMismatchError, exit 2, when resuming would be unsafe);
`--reprocess FILE` drops the file's progress."""

from __future__ import annotations

import os

from connectors.checkpoint import CheckpointStore, JobState, TimeWindow
from connectors.source_file import SourceFile
from moesif_backfill.errors import CheckpointMismatchError
from pipeline.settings import RunSettings


def load_state(
    settings: RunSettings,
    store: CheckpointStore | None,
    job: str,
    fingerprint: str,
    sources: list[SourceFile],
    *,
    has_shards: bool = False,
) -> JobState:
    state = None
    if store is not None and not (settings.reset and settings.mode == "send"):
        state = store.load(job)
    window = TimeWindow.of(settings.window_start, settings.window_end)
    if state is None:
        return JobState.new(job, fingerprint).model_copy(update={"window": window})
    where = store.describe() if store else ""
    if state.mapping_fingerprint != fingerprint:
        raise CheckpointMismatchError(
            f"job {job!r}: the mapping changed since this job's checkpoint was written "
            f"({where}); that would change transaction_ids or payloads of rows already "
            "delivered. Restore the old mapping to resume, or rerun with --reset to start the "
            "job over (Moesif deduplicates rows whose transaction_id is unchanged), or use a "
            "new --job name."
        )
    _check_window(state, window, where, has_shards)
    reprocess = reprocess_keys(settings)
    changed = []
    for src in sources:
        prog = state.files.get(src.key)
        if prog is None:
            continue
        if src.key in reprocess:
            del state.files[src.key]
            continue
        if prog.identity != src.identity():
            changed.append(src.key)
    if changed:
        shown = "\n  ".join(changed[:10])
        raise CheckpointMismatchError(
            f"job {job!r}: {len(changed)} input file(s) changed since they were (partly) "
            f"delivered:\n  {shown}\nRows already delivered from them would be skipped by "
            "position, which is no longer safe. Rerun with --reprocess FILE for each changed "
            "file (its rows are sent again; unchanged rows keep their transaction_id, so "
            "Moesif deduplicates them), or --reset to start the whole job over."
        )
    return state


def _check_window(
    state: JobState, window: TimeWindow, where: str, has_shards: bool = False
) -> None:
    """A job's chunks were committed under one time window; refuse another (a nightly day run
    in one time zone, then a range over the same day in another, would skip committed chunks
    that hold only the first window's rows). A checkpoint without a recorded window (written
    before windows were recorded) takes on this run's."""
    if state.window is None or (state.files == {} and not has_shards):
        state.window = window
        return
    if state.window.same_instants(window):
        return
    raise CheckpointMismatchError(
        f"job {state.job!r} was checkpointed with {state.window.describe()} ({where}); this run "
        f"asks for {window.describe()}. Its committed chunks hold only the rows inside the old "
        "window, so resuming under another one would leave rows undelivered. Rerun with the "
        "settings that made the old window (for a day job: the same --timezone and --window as "
        "before), or rerun with --reset to send the job again under the new window (Moesif "
        "deduplicates rows already delivered), or use a new --job name."
    )


def reprocess_keys(settings: RunSettings) -> set[str]:
    """The `--reprocess FILE` inputs as source keys (local paths made absolute)."""
    return {os.path.abspath(p) if "://" not in p else p for p in settings.reprocess}
