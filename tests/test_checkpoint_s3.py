"""S3 checkpoint store and its lease, against moto server S3 (a fresh bucket per test).

Never ``mock_aws`` here: it would reset the shared moto server of the session.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber

from connectors import checkpoint_s3_lease
from connectors.checkpoint import FileProgress, JobState
from connectors.checkpoint_factory import make_checkpoint_store
from connectors.checkpoint_local import LocalCheckpointStore
from connectors.checkpoint_s3 import S3CheckpointStore, parse_s3_url
from connectors.checkpoint_s3_lease import LeaseHolder
from moesif_backfill.errors import CheckpointError, ConfigError, JobLockedError
from tests.standins.moto_firehose import LocalFirehose, aws_client, ensure_bucket

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB = "job-a"
PREFIX = "ckpt/run"
FILE = "s3://data/a.parquet"

MakeStore = Callable[..., S3CheckpointStore]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def s3(moto_firehose: LocalFirehose) -> Any:
    return moto_firehose.s3_client()


@pytest.fixture
def bucket(moto_firehose: LocalFirehose, s3: Any) -> Iterator[str]:
    name = f"ckpt-{uuid.uuid4().hex[:16]}"
    ensure_bucket(s3, name, moto_firehose.region)
    yield name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def make_store(moto_firehose: LocalFirehose, bucket: str, s3: Any) -> Iterator[MakeStore]:
    """Stores on the test's bucket; their renewal threads are stopped afterwards.

    They share one (thread-safe) client unless ``own_client=True``: creating a boto3 client
    costs ~0.2 s, and each store still is an independent run with its own lease owner.
    """
    made: list[S3CheckpointStore] = []

    def make(*, own_client: bool = False, **kw: Any) -> S3CheckpointStore:
        kw.setdefault("client", None if own_client else s3)
        store = S3CheckpointStore(
            f"s3://{bucket}/{PREFIX}/",
            endpoint_url=moto_firehose.endpoint_url,
            region=moto_firehose.region,
            **kw,
        )
        made.append(store)
        return store

    yield make
    for store in made:
        for lease in list(store.leases.held.values()):
            _freeze(store, lease.job)


@pytest.fixture
def atomic_moto_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's conditional PUT atomic, as S3's is.

    moto checks If-Match / If-None-Match and then stores the object without a lock, so two
    concurrent conditional PUTs can both pass the check; S3 evaluates the condition atomically
    with the write. Serialising moto's PUT handler models S3 for the concurrent-takeover tests.
    """
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self: Any) -> Any:
        with lock:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


# -- helpers -------------------------------------------------------------------------------------


def _key(name: str, job: str = JOB) -> str:
    return f"{PREFIX}/{job}/{name}"


def _state(job: str = JOB) -> JobState:
    state = JobState.new(job, "fp-1")
    state.files[FILE] = FileProgress(identity={"etag": '"abc"', "size": 10}, chunk_rows=5)
    return state


def _commit_two(store: S3CheckpointStore) -> JobState:
    state = _state()
    fp = state.files[FILE]
    fp.mark_done(0, sent=5, rejected=0)
    store.commit(state)
    fp.mark_done(1, sent=4, rejected=1)
    store.commit(state)
    return state


def _get(s3: Any, bucket: str, name: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=_key(name))["Body"].read())


def _put(s3: Any, bucket: str, name: str, data: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=_key(name), Body=data)


def _lease_info(s3: Any, bucket: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(_get(s3, bucket, "lease.json"))
    return info


def _freeze(store: S3CheckpointStore, job: str = JOB) -> None:
    """Simulate a hung or crashed holder: its renewal stops, its lease object stays."""
    lease = store.leases.held[job]
    lease.stop.set()
    assert lease.thread is not None
    lease.thread.join(10)
    assert not lease.thread.is_alive()


def _sleep_until_expired(s3: Any, bucket: str) -> None:
    expires = datetime.fromisoformat(_lease_info(s3, bucket)["expires_at"])
    delay = (expires - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, delay) + 0.05)


def _lease_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


# -- state: commit / load / generations / reset --------------------------------------------------


def test_round_trip_layout_and_generations(make_store: MakeStore, s3: Any, bucket: str) -> None:
    store = make_store()
    assert store.describe() == f"s3://{bucket}/{PREFIX}"
    assert store.load(JOB) is None
    state = _commit_two(store)
    assert state.generation == 2
    loaded = store.load(JOB)
    assert loaded == state
    assert loaded is not None
    assert loaded.files[FILE].done == [(0, 2)]
    assert loaded.files[FILE].identity == {"etag": '"abc"', "size": 10}
    assert sorted(_lease_keys(s3, bucket)) == [_key("state.json"), _key("state.prev.json")]
    current = json.loads(_get(s3, bucket, "state.json"))
    previous = json.loads(_get(s3, bucket, "state.prev.json"))
    assert (current["format_version"], current["body"]["generation"]) == (1, 2)
    assert previous["body"]["generation"] == 1
    assert previous["body"]["files"][FILE]["done"] == [[0, 1]]
    # a second store (another machine, another working directory) sees the same state
    assert make_store(own_client=True).load(JOB) == state


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"\x00\xff not json", id="garbage"),
        pytest.param(lambda b: b.replace(b"[[0,2]]", b"[[0,3]]"), id="checksum"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_damaged_state_object_falls_back_to_previous(
    make_store: MakeStore,
    s3: Any,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[bytes], bytes],
) -> None:
    store = make_store()
    _commit_two(store)
    original = _get(s3, bucket, "state.json")
    damaged = damage(original)
    assert damaged != original
    _put(s3, bucket, "state.json", damaged)
    with caplog.at_level(logging.WARNING, logger="connectors.checkpoint"):
        loaded = store.load(JOB)
    assert loaded is not None
    assert loaded.generation == 1
    assert loaded.files[FILE].done == [(0, 1)]  # fewer chunks: re-sent, never skipped
    assert any(f"s3://{bucket}/{_key('state.json')}" in r.getMessage() for r in caplog.records)
    # committing after the recovery keeps the good previous generation, not the damaged one
    loaded.files[FILE].mark_done(1, sent=5, rejected=0)
    store.commit(loaded)
    assert json.loads(_get(s3, bucket, "state.prev.json"))["body"]["generation"] == 1
    assert store.load(JOB) == loaded


def test_both_damaged_raises_naming_s3_urls(make_store: MakeStore, s3: Any, bucket: str) -> None:
    store = make_store()
    _commit_two(store)
    _put(s3, bucket, "state.json", b"{")
    _put(s3, bucket, "state.prev.json", b"{")
    with pytest.raises(CheckpointError) as exc_info:
        store.load(JOB)
    message = str(exc_info.value)
    assert f"s3://{bucket}/{_key('state.json')}" in message
    assert f"s3://{bucket}/{_key('state.prev.json')}" in message
    assert "--reset" in message


def test_reset(make_store: MakeStore, s3: Any, bucket: str) -> None:
    store = make_store()
    _commit_two(store)
    with store.lock(JOB):
        store.reset(JOB)
        assert store.load(JOB) is None
        store.reset(JOB)  # idempotent
        state = _state()
        store.commit(state)  # the first commit after a reset (state.json absent)
        assert store.load(JOB) == state
    assert _lease_keys(s3, bucket) == [_key("state.json")]


def test_state_changed_by_another_writer_is_not_overwritten(
    make_store: MakeStore, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(lease_seconds=30)
    state = _commit_two(store)
    intruder = _state()
    intruder.generation = 41
    other = make_store()
    keep_previous = store._keep_previous

    def racing_keep_previous(job: str) -> None:
        keep_previous(job)  # reads state.json (remembering its ETag) and keeps it as previous
        other.commit(intruder)  # another writer commits between that read and our write

    monkeypatch.setattr(store, "_keep_previous", racing_keep_previous)
    with store.lock(JOB):
        state.files[FILE].mark_done(2, sent=5, rejected=0)
        with pytest.raises(CheckpointError, match=r"lease lost.*changed by another run"):
            store.commit(state)
        assert state.generation == 2  # restored
        assert store.lease_lost.is_set()
    assert json.loads(_get(s3, bucket, "state.json"))["body"]["generation"] == 42


# -- lease ---------------------------------------------------------------------------------------


def test_second_acquirer_refused_while_lease_is_live(
    make_store: MakeStore, s3: Any, bucket: str
) -> None:
    store = make_store(lease_seconds=30)
    with store.lock(JOB):
        info = _lease_info(s3, bucket)
        assert set(info) >= {"owner", "host", "pid", "expires_at"}
        assert info["pid"] == os.getpid()
        for contender in (store, make_store()):  # same store, and another "machine"
            with pytest.raises(JobLockedError) as exc_info, contender.lock(JOB):
                pass
            message = str(exc_info.value)
            assert f"job {JOB} is already running (pid {os.getpid()} on host " in message
            assert f"lease {info['owner'][:8]}" in message
            assert f"wait for it or stop it; it expires at {info['expires_at']}" in message
            assert f"s3://{bucket}/{_key('lease.json')}" in message
        with make_store().lock("job-b"):  # other jobs are independent
            pass
        store.commit(_state())
    assert _lease_keys(s3, bucket) == [_key("state.json")]  # released: lease deleted
    with make_store().lock(JOB):
        pass


def test_lease_released_on_exception(make_store: MakeStore, s3: Any, bucket: str) -> None:
    store = make_store()
    with pytest.raises(RuntimeError), store.lock(JOB):
        raise RuntimeError("boom")
    assert _lease_keys(s3, bucket) == []
    with store.lock(JOB):
        pass


def test_renewal_keeps_a_long_run_alive(make_store: MakeStore, s3: Any, bucket: str) -> None:
    store = make_store(lease_seconds=1.0)  # renewed every ~0.33 s
    with store.lock(JOB):
        first = _lease_info(s3, bucket)
        time.sleep(2.3)  # well past lease_seconds
        later = _lease_info(s3, bucket)
        assert later["owner"] == first["owner"]
        assert later["expires_at"] > first["expires_at"]
        with pytest.raises(JobLockedError):
            make_store(lease_seconds=1.0)._acquire(JOB)
        store.commit(_state())
        assert not store.lease_lost.is_set()
    assert _lease_keys(s3, bucket) == [_key("state.json")]


def test_expired_lease_is_taken_over(
    make_store: MakeStore, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    crashed = make_store(lease_seconds=1.0)
    crashed._acquire(JOB)
    crashed_owner = _lease_info(s3, bucket)["owner"]
    _freeze(crashed)
    with pytest.raises(JobLockedError):  # not yet expired
        make_store()._acquire(JOB)
    _sleep_until_expired(s3, bucket)
    successor = make_store(lease_seconds=30)
    with caplog.at_level(logging.WARNING, logger="connectors.checkpoint_s3_lease"):
        release = successor._acquire(JOB)
    takeovers = [r for r in caplog.records if "took over the expired lease" in r.getMessage()]
    assert len(takeovers) == 1
    assert takeovers[0].levelno == logging.WARNING
    assert f"lease {crashed_owner[:8]}" in takeovers[0].getMessage()
    assert _lease_info(s3, bucket)["owner"] == successor.leases.held[JOB].owner
    release()
    assert _lease_keys(s3, bucket) == []


def test_concurrent_takeovers_exactly_one_wins(
    make_store: MakeStore, s3: Any, bucket: str, atomic_moto_puts: None
) -> None:
    crashed = make_store(lease_seconds=1.0)
    crashed._acquire(JOB)
    _freeze(crashed)
    _sleep_until_expired(s3, bucket)

    takers = [make_store(lease_seconds=30) for _ in range(6)]
    barrier = threading.Barrier(len(takers))
    for taker in takers:  # everyone has read the expired lease before anyone writes
        real_get = taker.objects.get

        def get_then_wait(key: str, _real: Any = real_get, _seen: list[int] = []) -> Any:  # noqa: B006
            found = _real(key)
            if key.endswith("lease.json") and not _seen:
                _seen.append(1)
                barrier.wait(timeout=10)
            return found

        taker.objects.get = get_then_wait  # type: ignore[method-assign]

    results: dict[int, str] = {}

    def attempt(i: int) -> None:
        try:
            takers[i]._acquire(JOB)
            results[i] = "won"
        except JobLockedError as e:
            results[i] = f"refused: {e}"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    winners = [i for i, r in results.items() if r == "won"]
    assert len(results) == len(takers)
    assert len(winners) == 1, results
    winner = takers[winners[0]]
    assert _lease_info(s3, bucket)["owner"] == winner.leases.held[JOB].owner
    for i, r in results.items():
        if i != winners[0]:
            assert "is already running" in r
            assert JOB not in takers[i].leases.held


def test_run_whose_lease_was_taken_over_cannot_commit(
    make_store: MakeStore, s3: Any, bucket: str
) -> None:
    zombie = make_store(lease_seconds=1.0)
    release_zombie = zombie._acquire(JOB)
    zombie_state = _state()
    zombie.commit(zombie_state)
    _freeze(zombie)  # e.g. the process was suspended
    _sleep_until_expired(s3, bucket)

    successor = make_store(lease_seconds=30)
    with successor.lock(JOB):
        state = successor.load(JOB)
        assert state is not None
        state.files[FILE].mark_done(0, sent=5, rejected=0)
        successor.commit(state)
        successor.reset("job-b")  # operations of the live run work

        zombie_state.files[FILE].mark_done(3, sent=5, rejected=0)
        with pytest.raises(CheckpointError, match=r"^lease lost for job job-a: "):
            zombie.commit(zombie_state)
        assert zombie.lease_lost.is_set()
        with pytest.raises(CheckpointError, match="lease lost"):
            zombie.reset(JOB)
        release_zombie()  # must not delete the successor's lease
        assert _lease_info(s3, bucket)["owner"] == successor.leases.held[JOB].owner
        with pytest.raises(CheckpointError, match="lease lost"):
            zombie.commit(zombie_state)  # still refused after its lock block ended
        assert successor.load(JOB) == state
        assert not successor.lease_lost.is_set()
        successor.commit(state)


def test_renewal_notices_a_takeover_loudly(
    make_store: MakeStore, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(lease_seconds=3.0, renew_every_s=0.2)
    with caplog.at_level(logging.ERROR, logger="connectors.checkpoint_s3_lease"), store.lock(JOB):
        intruder = {**_lease_info(s3, bucket), "owner": "f" * 32, "pid": 4242}
        _put(s3, bucket, "lease.json", json.dumps(intruder).encode())
        assert store.lease_lost.wait(5)
        with pytest.raises(CheckpointError, match=r"lease lost.*pid 4242"):
            store.commit(_state())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("LEASE LOST" in r.getMessage() for r in errors)
    assert _lease_info(s3, bucket)["owner"] == "f" * 32  # not deleted on release


def test_commit_checks_the_lease_before_renewal_notices(
    make_store: MakeStore, s3: Any, bucket: str
) -> None:
    store = make_store(lease_seconds=60)  # next renewal in 20 s
    with store.lock(JOB):
        store.commit(_state())
        intruder = {**_lease_info(s3, bucket), "owner": "e" * 32}
        _put(s3, bucket, "lease.json", json.dumps(intruder).encode())
        with pytest.raises(CheckpointError, match="another run took it over"):
            store.commit(_state())
        assert store.lease_lost.is_set()


class _FlakyClient:
    """An S3 client whose PUTs fail with a connection error while ``fail_puts`` is set."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.fail_puts = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_object(self, **kw: Any) -> Any:
        if self.fail_puts.is_set():
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        return self._inner.put_object(**kw)


def test_renewal_errors_are_retried_then_lose_the_lease_at_expiry(
    make_store: MakeStore, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = _FlakyClient(s3)
    store = make_store(lease_seconds=2.0, renew_every_s=0.2, client=flaky)
    with caplog.at_level(logging.WARNING, logger="connectors.checkpoint_s3_lease"), store.lock(JOB):
        flaky.fail_puts.set()
        time.sleep(0.5)  # a short outage: retried, the lease survives
        flaky.fail_puts.clear()
        time.sleep(0.4)
        assert not store.lease_lost.is_set()
        assert any("could not renew the lease" in r.getMessage() for r in caplog.records)
        store.commit(_state())

        flaky.fail_puts.set()  # an outage longer than the lease: lost, loudly
        assert store.lease_lost.wait(5)
        flaky.fail_puts.clear()
        with pytest.raises(CheckpointError, match=r"lease lost.*before it expired"):
            store.commit(_state())
    assert any(
        r.levelno == logging.ERROR and "LEASE LOST" in r.getMessage() for r in caplog.records
    )


def test_paused_run_revalidates_its_lease_before_committing(
    make_store: MakeStore, s3: Any, bucket: str
) -> None:
    store = make_store(lease_seconds=1.0)
    with store.lock(JOB):
        before = _lease_info(s3, bucket)
        _freeze(store)  # the process was suspended past its lease, but nobody took over
        _sleep_until_expired(s3, bucket)
        store.commit(_state())  # renews with If-Match first: still ours, so it may commit
        after = _lease_info(s3, bucket)
        assert after["owner"] == before["owner"]
        assert after["expires_at"] > before["expires_at"]
        assert not store.lease_lost.is_set()


def test_unreadable_lease_object_is_judged_by_its_age(
    make_store: MakeStore, s3: Any, bucket: str
) -> None:
    _put(s3, bucket, "lease.json", b"not a lease")
    with pytest.raises(JobLockedError, match=r"holder details unavailable"):
        make_store(lease_seconds=30)._acquire(JOB)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    assert LeaseHolder.parse(b"not a lease", old, 30).expired(datetime.now(UTC))
    assert not LeaseHolder.parse(b"{}", datetime.now(UTC), 30).expired(datetime.now(UTC))


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from connectors.checkpoint_s3 import S3CheckpointStore
    url, endpoint, job, lease = sys.argv[1:5]
    store = S3CheckpointStore(url, endpoint_url=endpoint, lease_seconds=float(lease))
    with store.lock(job):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_sigkilled_holder_is_taken_over_after_expiry(
    moto_firehose: LocalFirehose,
    make_store: MakeStore,
    s3: Any,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lease_seconds = 1.5
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    url = f"s3://{bucket}/{PREFIX}/"
    args = [url, moto_firehose.endpoint_url, JOB, str(lease_seconds)]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        store = make_store(lease_seconds=30)
        with pytest.raises(JobLockedError, match=rf"\(pid {holder.pid} on host .+\)"):
            store._acquire(JOB)
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
        killed = time.monotonic()
        expires = datetime.fromisoformat(_lease_info(s3, bucket)["expires_at"])
        deadline = killed + lease_seconds + 5
        with caplog.at_level(logging.WARNING, logger="connectors.checkpoint_s3_lease"):
            while True:
                try:
                    release = store._acquire(JOB)
                    break
                except JobLockedError:
                    assert time.monotonic() < deadline, "the crashed holder's lease never expired"
                    time.sleep(0.1)
        assert datetime.now(UTC) >= expires  # not before the dead holder's lease expired
        assert time.monotonic() - killed <= lease_seconds + 1.0
        assert any(f"pid {holder.pid}" in r.getMessage() for r in caplog.records)
        store.commit(_state())
        release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


# -- errors, configuration, factory --------------------------------------------------------------


def test_missing_bucket_is_explained(moto_firehose: LocalFirehose) -> None:
    store = S3CheckpointStore(
        f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/p/", endpoint_url=moto_firehose.endpoint_url
    )
    with pytest.raises(CheckpointError, match=r"s3://no-such-bucket-.*/p/job-a/state.json.*"):
        store.load(JOB)
    with pytest.raises(CheckpointError, match="bucket does not exist"):
        store.commit(_state())
    with pytest.raises(CheckpointError, match="could not create the lease"), store.lock(JOB):
        pass


def test_access_denied_is_explained_without_secrets(moto_firehose: LocalFirehose) -> None:
    client = aws_client("s3", moto_firehose.endpoint_url)
    store = S3CheckpointStore("s3://locked-bucket/p", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", "AccessDenied", "Access Denied", 403)
        with pytest.raises(CheckpointError) as exc_info:
            store.load(JOB)
    message = str(exc_info.value)
    assert "s3://locked-bucket/p/job-a/state.json" in message
    assert "access denied" in message
    assert "s3:GetObject" in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message
    assert os.environ["AWS_ACCESS_KEY_ID"] not in message


def test_unreachable_endpoint_is_explained() -> None:
    store = S3CheckpointStore(
        "s3://bucket/p", endpoint_url="http://user:hunter2@127.0.0.1:9", region="us-east-1"
    )
    with pytest.raises(CheckpointError, match="could not connect to the S3 endpoint") as exc_info:
        store.load(JOB)
    assert "hunter2" not in str(exc_info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://b/p/", ("b", "p")),
        ("s3://b/a/b/c", ("b", "a/b/c")),
        ("s3://b", ("b", "")),
        ("s3://b/", ("b", "")),
        ("S3://b/p", ("b", "p")),
    ],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "s3:///p", "s3://b/a//c", "s3://b/../x", "/tmp/x"])
def test_parse_s3_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_s3_url(url)


def test_describe_without_prefix_and_bad_lease_settings() -> None:
    assert S3CheckpointStore("s3://b", region="us-east-1").describe() == "s3://b"
    with pytest.raises(ConfigError, match="lease_seconds"):
        S3CheckpointStore("s3://b", region="us-east-1", lease_seconds=0)
    with pytest.raises(ConfigError, match="renew_every_s"):
        S3CheckpointStore("s3://b", region="us-east-1", lease_seconds=10, renew_every_s=10)


def test_factory(tmp_path: Path, moto_firehose: LocalFirehose) -> None:
    s3_store = make_checkpoint_store(
        "s3://bucket/prefix/", endpoint_url=moto_firehose.endpoint_url, region="eu-west-1"
    )
    assert isinstance(s3_store, S3CheckpointStore)
    assert s3_store.describe() == "s3://bucket/prefix"
    local = make_checkpoint_store(tmp_path / "ckpt")
    assert isinstance(local, LocalCheckpointStore)
    assert isinstance(make_checkpoint_store(str(tmp_path / "c2")), LocalCheckpointStore)
    with pytest.raises(ConfigError, match="gs://"):
        make_checkpoint_store("gs://bucket/prefix/")


# -- the fence: state.json and state.prev.json are written conditionally on this run's own -----
# -- last write (or, before its first write, on what it loaded), never on a fresh read -------


@pytest.mark.parametrize("after", ["_check_lease", "_keep_previous"])
def test_takeover_right_before_a_commit_writes_is_fenced(
    make_store: MakeStore, s3: Any, bucket: str, after: str
) -> None:
    """Run A holds the lease. Run B takes it over (A's lease looks expired to B: B's clock runs
    ahead, or A was paused) and commits right after A checked its lease (or right after A
    kept its previous generation), before A writes. Whatever A could have read at that point
    would look fine; A's writes are conditional on the ETags of its own last writes, so they
    fail with 412: B's state.json and state.prev.json stay exactly as B wrote them."""
    a = make_store(lease_seconds=30)
    release_a = a._acquire(JOB)
    assert a.load(JOB) is None
    a_state = _commit_two(a)  # generation 2, previous generation 1
    _freeze(a)  # no renewal: only the writes themselves can notice the takeover

    b = make_store(lease_seconds=30)
    written: dict[str, bytes] = {}

    def b_takes_over_and_commits() -> None:
        real_now = checkpoint_s3_lease.wall_now
        with pytest.MonkeyPatch.context() as mp:  # B's clock is an hour ahead of A's
            mp.setattr(checkpoint_s3_lease, "wall_now", lambda: real_now() + timedelta(hours=1))
            b._acquire(JOB)
        b_state = b.load(JOB)
        assert b_state is not None and b_state.generation == 2
        b_state.files[FILE].mark_done(2, sent=5, rejected=0)
        b.commit(b_state)
        written.update(
            state=_get(s3, bucket, "state.json"), prev=_get(s3, bucket, "state.prev.json")
        )

    real = getattr(a, after)

    def then_b(job: str) -> None:
        real(job)
        if not written:
            b_takes_over_and_commits()

    setattr(a, after, then_b)
    a_state.files[FILE].mark_done(3, sent=5, rejected=0)
    lost = r"^lease lost for job job-a: .*changed by another run"
    with pytest.raises(CheckpointError, match=lost):
        a.commit(a_state)
    assert written and a.lease_lost.is_set() and a_state.generation == 2
    assert _get(s3, bucket, "state.json") == written["state"]
    assert _get(s3, bucket, "state.prev.json") == written["prev"]
    assert json.loads(written["state"])["body"]["generation"] == 3
    assert json.loads(written["prev"])["body"]["generation"] == 2
    release_a()  # must not delete B's lease
    assert _lease_info(s3, bucket)["owner"] == b.leases.held[JOB].owner
    assert not b.lease_lost.is_set()


@pytest.mark.parametrize("existed", [False, True], ids=["absent-at-load", "present-at-load"])
def test_first_commit_of_a_run_is_conditional_on_what_it_loaded(
    make_store: MakeStore, s3: Any, bucket: str, existed: bool
) -> None:
    """A run's first commit has no own write to be conditional on: it expects state.json (and
    state.prev.json) as the run loaded them: IfMatch on the ETag seen at load, IfNoneMatch="*"
    when absent. Another run writing between the load and the first commit (the previous
    holder, still running without having noticed the takeover) makes that commit fail instead
    of being overwritten: the checkpoint keeps what the other run delivered."""
    if existed:
        make_store().commit(_state())  # generation 1; no previous generation yet
    b = make_store(lease_seconds=30)
    with b.lock(JOB):
        loaded = b.load(JOB)
        assert (loaded is not None) is existed
        other = _state()
        other.generation = 40
        other.files[FILE].mark_done(0, sent=5, rejected=0)
        make_store().commit(other)  # lands after B's load
        theirs = _get(s3, bucket, "state.json")
        state = loaded if loaded is not None else _state()
        with pytest.raises(CheckpointError, match=r"lease lost.*changed by another run"):
            b.commit(state)
        assert b.lease_lost.is_set()
    assert _get(s3, bucket, "state.json") == theirs
    assert json.loads(theirs)["body"]["generation"] == 41


def test_commits_keep_their_own_last_write_as_the_previous_generation(
    make_store: MakeStore, s3: Any, bucket: str
) -> None:
    """A resumed run keeps exactly the generation before as state.prev.json (the bytes it
    loaded, then the bytes it last wrote), without reading state.json again: a commit is a
    lease check (GET lease.json) and two conditional PUTs."""
    _commit_two(make_store())
    resumed = make_store(own_client=True, lease_seconds=30)
    calls: list[tuple[str, str]] = []

    def seen(model: Any, params: dict[str, Any], **_: Any) -> None:
        headers = params.get("headers", {})
        condition = "If-Match" if "If-Match" in headers else headers.get("If-None-Match", "")
        calls.append((model.name, params["url_path"].rsplit("/", 1)[-1] + f" {condition}"))

    resumed.client.meta.events.register("before-call.s3", seen)
    with resumed.lock(JOB):
        state = resumed.load(JOB)
        assert state is not None and state.generation == 2
        for chunk in (2, 3):
            before = _get(s3, bucket, "state.json")
            calls.clear()
            state.files[FILE].mark_done(chunk, sent=5, rejected=0)
            resumed.commit(state)
            assert calls == [
                ("GetObject", "lease.json "),
                ("PutObject", "state.prev.json If-Match"),
                ("PutObject", "state.json If-Match"),
            ]
            assert _get(s3, bucket, "state.prev.json") == before
            current = json.loads(_get(s3, bucket, "state.json"))["body"]
            assert current["generation"] == state.generation == chunk + 1
    assert make_store().load(JOB) == state
