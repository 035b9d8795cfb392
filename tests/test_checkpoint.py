"""Checkpoint state model and the local checkpoint store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.checkpoint import (
    FORMAT_VERSION,
    CheckpointStore,
    FileProgress,
    JobState,
    validate_job_name,
)
from connectors.checkpoint_local import LocalCheckpointStore
from moesif_backfill.errors import CheckpointError, ConfigError, JobLockedError

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB = "job-a"


def _ranges(chunks: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for c in sorted(chunks):
        if out and out[-1][1] == c:
            out[-1] = (out[-1][0], c + 1)
        else:
            out.append((c, c + 1))
    return out


def _progress(**kw: object) -> FileProgress:
    return FileProgress(identity={"size": 10, "mtime_ns": 1}, chunk_rows=5, **kw)  # type: ignore[arg-type]


def _state(job: str = JOB) -> JobState:
    state = JobState.new(job, "fp-1")
    state.files["s3://bucket/a.csv"] = _progress()
    return state


def _envelope(body: dict[str, object], *, version: int = FORMAT_VERSION) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps({"format_version": version, "sha256": digest, "body": body}).encode()


@pytest.fixture
def store(tmp_path: Path) -> LocalCheckpointStore:
    return LocalCheckpointStore(tmp_path / "ckpt")


def _commit_two(store: LocalCheckpointStore) -> JobState:
    """Commit generation 1 (chunk 0 done) and 2 (chunks 0-1 done); return the state."""
    state = _state()
    fp = state.files["s3://bucket/a.csv"]
    fp.mark_done(0, sent=5, rejected=0)
    store.commit(state)
    fp.mark_done(1, sent=4, rejected=1)
    store.commit(state)
    return state


# -- FileProgress ------------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200), st.randoms())
def test_mark_done_merges_ranges_and_counts_each_chunk_once(
    chunks: list[int], rnd: random.Random
) -> None:
    fp = _progress()
    order = chunks + chunks[: len(chunks) // 2]  # repeats
    rnd.shuffle(order)
    for c in order:
        fp.mark_done(c, sent=c + 1, rejected=c % 3)
    unique = set(chunks)
    assert fp.done == _ranges(unique)
    assert fp.chunks_done == len(unique)
    assert fp.rows_sent == sum(c + 1 for c in unique)
    assert fp.rows_rejected == sum(c % 3 for c in unique)
    for c in range(302):
        assert fp.is_done(c) == (c in unique)
    FileProgress.model_validate(fp.model_dump())  # invariants hold


def test_mark_done_repeat_with_other_counts_is_ignored() -> None:
    fp = _progress()
    fp.mark_done(3, sent=5, rejected=0)
    fp.mark_done(3, sent=7, rejected=2)
    assert (fp.rows_sent, fp.rows_rejected, fp.done) == (5, 0, [(3, 4)])


def test_mark_done_bridges_two_ranges() -> None:
    fp = _progress()
    for c in (0, 1, 3, 4):
        fp.mark_done(c, sent=1, rejected=0)
    assert fp.done == [(0, 2), (3, 5)]
    fp.mark_done(2, sent=1, rejected=0)
    assert fp.done == [(0, 5)]


def test_mark_done_rejects_bad_chunks() -> None:
    fp = _progress(total_chunks=2)
    with pytest.raises(ValueError):
        fp.mark_done(-1, sent=0, rejected=0)
    with pytest.raises(ValueError):
        fp.mark_done(2, sent=0, rejected=0)
    with pytest.raises(ValueError):
        fp.mark_done(0, sent=-1, rejected=0)


def test_complete() -> None:
    fp = _progress()
    fp.mark_done(0, sent=1, rejected=0)
    fp.mark_done(1, sent=1, rejected=0)
    assert not fp.complete  # total unknown
    fp.total_chunks = 3
    assert not fp.complete
    fp.mark_done(2, sent=1, rejected=0)
    assert fp.complete
    assert _progress(total_chunks=0).complete


@pytest.mark.parametrize(
    "done",
    [[(1, 1)], [(2, 1)], [(-1, 2)], [(0, 2), (2, 3)], [(3, 4), (0, 1)], [(0, 3), (1, 2)]],
)
def test_file_progress_rejects_malformed_ranges(done: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        _progress(done=done)


def test_file_progress_rejects_ranges_past_total() -> None:
    with pytest.raises(ValueError):
        _progress(done=[(0, 4)], total_chunks=3)


# -- commit / load -----------------------------------------------------------------------------


def test_load_unknown_job_returns_none(store: LocalCheckpointStore) -> None:
    assert store.load(JOB) is None


def test_commit_load_round_trip(store: LocalCheckpointStore) -> None:
    state = _state()
    fp = state.files["s3://bucket/a.csv"]
    fp.mark_done(0, sent=5, rejected=0)
    fp.mark_done(2, sent=3, rejected=2)
    fp.total_chunks = 3
    state.files["/data/b.parquet"] = FileProgress(identity={"etag": "abc"}, chunk_rows=1000)
    store.commit(state)
    loaded = store.load(JOB)
    assert loaded == state
    assert loaded is not None
    assert loaded.files["s3://bucket/a.csv"].done == [(0, 1), (2, 3)]
    assert loaded.files["s3://bucket/a.csv"].identity == {"size": 10, "mtime_ns": 1}


def test_commit_increments_generation_and_keeps_previous(
    store: LocalCheckpointStore, tmp_path: Path
) -> None:
    state = _state()
    assert state.generation == 0
    created = state.created_at
    state.updated_at = "2000-01-01T00:00:00.000+00:00"
    store.commit(state)
    assert state.generation == 1
    assert state.updated_at > "2000"
    assert state.created_at == created
    state.files["s3://bucket/a.csv"].mark_done(0, sent=5, rejected=0)
    store.commit(state)
    assert state.generation == 2

    job_dir = tmp_path / "ckpt" / JOB
    current = json.loads((job_dir / "state.json").read_bytes())
    previous = json.loads((job_dir / "state.prev.json").read_bytes())
    assert current["format_version"] == FORMAT_VERSION
    assert current["body"]["generation"] == 2
    assert previous["body"]["generation"] == 1
    assert previous["body"]["files"]["s3://bucket/a.csv"]["done"] == []
    assert sorted(p.name for p in job_dir.iterdir()) == ["state.json", "state.prev.json"]


def test_commit_failure_restores_generation(
    store: LocalCheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state()
    store.commit(state)

    def boom(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_write_atomic", boom)
    updated = state.updated_at
    with pytest.raises(CheckpointError, match="No space left"):
        store.commit(state)
    assert (state.generation, state.updated_at) == (1, updated)


def _corrupt_truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_invalid_json(path: Path) -> None:
    path.write_bytes(b"\x00\xff not json")


def _corrupt_checksum(path: Path) -> None:
    envelope = json.loads(path.read_bytes())
    envelope["body"]["files"]["s3://bucket/a.csv"]["done"] = [[0, 99]]
    path.write_text(json.dumps(envelope))


def _corrupt_schema(path: Path) -> None:
    body = json.loads(path.read_bytes())["body"]
    body["generation"] = "many"
    path.write_bytes(_envelope(body))


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


CORRUPTIONS = [
    _corrupt_truncated,
    _corrupt_invalid_json,
    _corrupt_checksum,
    _corrupt_schema,
    _corrupt_empty,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_damaged_current_recovers_previous(
    store: LocalCheckpointStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    corrupt: object,
) -> None:
    _commit_two(store)
    corrupt(tmp_path / "ckpt" / JOB / "state.json")  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="connectors.checkpoint"):
        loaded = store.load(JOB)
    assert loaded is not None
    assert loaded.generation == 1
    assert loaded.files["s3://bucket/a.csv"].done == [(0, 1)]  # fewer chunks: re-sent, not lost
    assert any(
        r.levelno == logging.WARNING and "state.json" in r.getMessage() for r in caplog.records
    )


def test_missing_current_recovers_previous(store: LocalCheckpointStore, tmp_path: Path) -> None:
    _commit_two(store)
    (tmp_path / "ckpt" / JOB / "state.json").unlink()
    loaded = store.load(JOB)
    assert loaded is not None
    assert loaded.generation == 1


def test_commit_after_recovery_keeps_good_previous(
    store: LocalCheckpointStore, tmp_path: Path
) -> None:
    _commit_two(store)
    _corrupt_truncated(tmp_path / "ckpt" / JOB / "state.json")
    state = store.load(JOB)
    assert state is not None
    state.files["s3://bucket/a.csv"].mark_done(1, sent=4, rejected=1)
    store.commit(state)
    assert state.generation == 2
    # the damaged file did not replace the good previous generation
    _corrupt_invalid_json(tmp_path / "ckpt" / JOB / "state.json")
    again = store.load(JOB)
    assert again is not None
    assert again.generation == 1


@pytest.mark.parametrize("corrupt_prev", [_corrupt_truncated, _corrupt_checksum, None])
def test_both_damaged_raises(
    store: LocalCheckpointStore, tmp_path: Path, corrupt_prev: object
) -> None:
    _commit_two(store)
    job_dir = tmp_path / "ckpt" / JOB
    _corrupt_invalid_json(job_dir / "state.json")
    if corrupt_prev is None:
        (job_dir / "state.prev.json").unlink()
    else:
        corrupt_prev(job_dir / "state.prev.json")  # type: ignore[operator]
    with pytest.raises(CheckpointError) as exc_info:
        store.load(JOB)
    message = str(exc_info.value)
    assert "state.json" in message
    assert "state.prev.json" in message
    assert "--reset" in message


@pytest.mark.parametrize("where", ["envelope", "body"])
def test_newer_format_raises_without_fallback(
    store: LocalCheckpointStore, tmp_path: Path, where: str
) -> None:
    _commit_two(store)
    path = tmp_path / "ckpt" / JOB / "state.json"
    body = json.loads(path.read_bytes())["body"]
    if where == "envelope":
        body["something_new"] = True
        path.write_bytes(_envelope(body, version=FORMAT_VERSION + 1))
    else:
        body["format_version"] = FORMAT_VERSION + 1
        path.write_bytes(_envelope(body))
    with pytest.raises(CheckpointError, match="upgrade moesif-backfill"):
        store.load(JOB)
    # committing must not clobber the newer state either
    with pytest.raises(CheckpointError, match="upgrade moesif-backfill"):
        store.commit(_state())


def test_state_of_other_job_raises(store: LocalCheckpointStore, tmp_path: Path) -> None:
    store.commit(_state("job-b"))
    (tmp_path / "ckpt" / JOB).mkdir()
    os.replace(tmp_path / "ckpt" / "job-b" / "state.json", tmp_path / "ckpt" / JOB / "state.json")
    with pytest.raises(CheckpointError, match="job-b"):
        store.load(JOB)


def test_reset(store: LocalCheckpointStore) -> None:
    _commit_two(store)
    with store.lock(JOB):
        store.reset(JOB)
        assert store.load(JOB) is None
        store.reset(JOB)  # idempotent
    assert store.load(JOB) is None
    store.commit(_state())
    assert store.load(JOB) is not None


def test_describe_is_root(store: LocalCheckpointStore, tmp_path: Path) -> None:
    assert store.describe() == str(tmp_path / "ckpt")


def test_store_is_a_checkpoint_store(store: LocalCheckpointStore) -> None:
    assert isinstance(store, CheckpointStore)


# -- job names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("job", ["a", "billing_2024-01.v2", "A" * 128, "..x", "-"])
def test_valid_job_names(job: str) -> None:
    assert validate_job_name(job) == job


@pytest.mark.parametrize(
    "job", ["", ".", "..", "a/b", "../x", "a b", "A" * 129, "ü", "job\n", "a\\b", "a:b"]
)
def test_invalid_job_names(store: LocalCheckpointStore, job: str) -> None:
    with pytest.raises(ConfigError, match="letters"):
        validate_job_name(job)
    with pytest.raises(ConfigError):
        store.load(job)
    with pytest.raises(ConfigError):
        store.reset(job)
    with pytest.raises(ConfigError), store.lock(job):
        pass
    with pytest.raises(ConfigError):
        JobState.new(job, "fp")


# -- lock --------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from connectors.checkpoint_local import LocalCheckpointStore
    with LocalCheckpointStore(sys.argv[1]).lock(sys.argv[2]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def _start_holder(root: Path, job: str = JOB) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), job],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_within_a_process(store: LocalCheckpointStore) -> None:
    with store.lock(JOB):
        with pytest.raises(JobLockedError) as exc_info, store.lock(JOB):
            pass
        message = str(exc_info.value)
        assert f"job {JOB} is already running (pid {os.getpid()} on host " in message
        assert "wait for it or stop it" in message
        # another job is independent
        with store.lock("job-b"):
            pass
        # a second store on the same root is refused too
        with pytest.raises(JobLockedError), LocalCheckpointStore(store.root).lock(JOB):
            pass
    with store.lock(JOB):  # released
        pass


def test_lock_released_on_exception(store: LocalCheckpointStore) -> None:
    with pytest.raises(RuntimeError), store.lock(JOB):
        raise RuntimeError("boom")
    with store.lock(JOB):
        pass


def test_lock_is_exclusive_across_processes_and_released_on_sigkill(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    holder = _start_holder(root)
    try:
        store = LocalCheckpointStore(root)
        expected = rf"\(pid {holder.pid} on host .+ since .+\)"
        with pytest.raises(JobLockedError, match=expected), store.lock(JOB):
            pass
        # state operations do not need the lock file and still work
        store.commit(_state())
        assert store.load(JOB) is not None
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        with store.lock(JOB):  # no stale lock after SIGKILL
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_child_process_refused_while_parent_holds_lock(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    store = LocalCheckpointStore(root)
    probe = textwrap.dedent(
        """
        import sys
        from connectors.checkpoint_local import LocalCheckpointStore
        from moesif_backfill.errors import JobLockedError
        try:
            with LocalCheckpointStore(sys.argv[1]).lock(sys.argv[2]):
                print("acquired")
        except JobLockedError as e:
            print("refused", e)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-c", probe, str(root), JOB]
    with store.lock(JOB):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        assert out.startswith("refused"), out
        assert f"pid {os.getpid()}" in out
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert out.startswith("acquired"), out


def test_stale_temp_files_removed_when_locking(store: LocalCheckpointStore, tmp_path: Path) -> None:
    store.commit(_state())
    stale = tmp_path / "ckpt" / JOB / ".state.json.abc123.tmp"
    stale.write_bytes(b"{half")
    with store.lock(JOB):
        assert not stale.exists()
    assert store.load(JOB) is not None
