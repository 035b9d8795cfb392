"""Run the local Firehose stand-ins from a shell (used by ``make demo``).

    python -m tests.standins up    --state-file PATH [--stream NAME] [--region R]
    python -m tests.standins wait  --state-file PATH [--timeout S]
    python -m tests.standins stats --state-file PATH [--transaction-ids] [--collector]
    python -m tests.standins down  --state-file PATH [--timeout S]

``up`` starts the receiver and moto (Firehose + S3) on 127.0.0.1, creates the bucket and the
stream, starts the Moesif Collector API stand-in (`tests.standins.collector`; it expects the
application id in ``MOESIF_APPLICATION_ID``, else ``DEMO_APP_ID``), then writes
``{"endpoint_url", "region", "stream", "receiver_url", "delivery_url", "bucket",
"collector_url", "pid"}`` (never the application id) as JSON to the state file (atomically,
only once everything answers) and serves until SIGTERM/SIGINT; on the way out it removes the
state file. Typical shell use::

    python -m tests.standins up --state-file .demo/standins.json &
    python -m tests.standins wait --state-file .demo/standins.json
    ... send with endpoint_url/stream from the state file ...
    python -m tests.standins stats --state-file .demo/standins.json
    python -m tests.standins down --state-file .demo/standins.json

Exit codes: 0 ok, 1 failure (not ready in time, already running, receiver unreachable),
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

_PROG = "python -m tests.standins"
_CMDLINE_MARK = b"tests.standins"
DEMO_APP_ID = "local-demo-application-id"  # a stand-in's id, not a secret


def _err(message: str) -> None:
    print(f"standins: {message}", file=sys.stderr, flush=True)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_is_standins(pid: int) -> bool:
    """True when ``pid`` runs this module (guards against signalling a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): fall back to the liveness check
        return _pid_alive(pid)
    return _CMDLINE_MARK in cmdline


def _http_get(url: str, timeout: float = 5.0) -> bytes:
    # An empty ProxyHandler: never route the loopback request through an environment proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


# -- commands --------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    state_file: Path = args.state_file
    previous = _read_state(state_file)
    if previous is not None:
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _pid_is_standins(pid):
            _err(f"already running (pid {pid}) for {state_file}; run `{_PROG} down` first")
            return 1
    state_file.unlink(missing_ok=True)  # a stale file must not look like "ready"

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    # Imported here so that `wait`, `stats` and `down` stay fast (no boto3/moto import).
    from tests.standins.collector import CollectorStandin
    from tests.standins.moto_firehose import LocalFirehose

    options = {"stream": args.stream, "region": args.region}
    local = LocalFirehose(
        **{k: v for k, v in options.items() if v is not None},
        moto_port=args.moto_port,
        receiver_port=args.receiver_port,
    )
    collector = CollectorStandin(os.environ.get("MOESIF_APPLICATION_ID") or DEMO_APP_ID)
    try:
        local.start()
        collector.start()
    except Exception as exc:
        _err(f"failed to start: {type(exc).__name__}: {exc}")
        local.stop()
        return 1
    try:
        state = {
            "endpoint_url": local.endpoint_url,
            "region": local.region,
            "stream": local.stream,
            "receiver_url": local.receiver_url,
            "delivery_url": local.delivery_url,
            "bucket": local.bucket,
            "collector_url": collector.url,
            "pid": os.getpid(),
        }
        _write_state(state_file, state)
        _err(
            f"up (pid {os.getpid()}): firehose {local.endpoint_url} stream {local.stream!r}, "
            f"receiver {local.receiver_url}; state in {state_file}"
        )
        while not stop.wait(0.5):
            pass
    finally:
        collector.stop()
        local.stop()
        current = _read_state(state_file)
        if current is not None and current.get("pid") == os.getpid():
            state_file.unlink(missing_ok=True)
        _err("down")
    return 0


def _ready(state: dict[str, Any] | None) -> bool:
    if state is None or not isinstance(state.get("receiver_url"), str):
        return False
    try:
        _http_get(f"{state['receiver_url']}/healthz", timeout=2.0)
    except (OSError, urllib.error.URLError):
        return False
    return True


def cmd_wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if _ready(_read_state(args.state_file)):
            return 0
        time.sleep(0.1)
    _err(f"stand-ins not ready after {args.timeout:g} s (no usable {args.state_file})")
    return 1


def cmd_stats(args: argparse.Namespace) -> int:
    state = _read_state(args.state_file)
    if state is None:
        _err(f"no state file {args.state_file}: is `{_PROG} up` running?")
        return 1
    path = "/transaction_ids" if args.transaction_ids else "/stats"
    base = state.get("collector_url") if args.collector else state.get("receiver_url")
    try:
        body = _http_get(f"{base}{path}")
    except (OSError, urllib.error.URLError) as exc:
        _err(f"stand-in at {base} unreachable: {exc}")
        return 1
    if args.transaction_ids:
        sys.stdout.write(body.decode())
    else:
        print(json.dumps(json.loads(body), indent=2, sort_keys=True))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_file: Path = args.state_file
    state = _read_state(state_file)
    if state is None:
        _err(f"not running (no state file {state_file})")
        return 0
    pid = state.get("pid")
    if not isinstance(pid, int) or not _pid_is_standins(pid):
        _err(f"stale state file {state_file} (pid {pid} is not running the stand-ins); removed")
        state_file.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    # `up` removes the state file after its servers are closed; a zombie (exited but not yet
    # reaped by the shell that started it) still "exists", so the file is the better signal.
    while time.monotonic() < deadline:
        if not state_file.exists() or not _pid_alive(pid):
            return 0
        time.sleep(0.05)
    _err(f"pid {pid} did not stop within {args.timeout:g} s; sending SIGKILL")
    if _pid_is_standins(pid):
        os.kill(pid, signal.SIGKILL)
    state_file.unlink(missing_ok=True)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--state-file", type=Path, required=True, help="JSON state file")
        return p

    up = add("up", "start receiver + moto and serve until SIGTERM/SIGINT")
    up.add_argument("--stream", help="delivery stream name (default moesif-actions-local)")
    up.add_argument("--region", help="AWS region name for the clients (default us-east-1)")
    up.add_argument("--moto-port", type=int, default=0, help="0 = a free port")
    up.add_argument("--receiver-port", type=int, default=0, help="0 = a free port")
    up.set_defaults(func=cmd_up)

    wait = add("wait", "wait until a running `up` is ready")
    wait.add_argument("--timeout", type=float, default=30.0)
    wait.set_defaults(func=cmd_wait)

    stats = add("stats", "print the receiver's stats JSON")
    stats.add_argument(
        "--transaction-ids", action="store_true", help="print unique transaction ids instead"
    )
    stats.add_argument(
        "--collector", action="store_true", help="the Collector API stand-in's, not the receiver's"
    )
    stats.set_defaults(func=cmd_stats)

    down = add("down", "stop a running `up`")
    down.add_argument("--timeout", type=float, default=15.0)
    down.set_defaults(func=cmd_down)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
