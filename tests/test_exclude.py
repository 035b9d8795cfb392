"""`--exclude GLOB` (issue 12, item 7): a directory or S3 prefix holding a README beside the data
can be run; patterns match the path below the given input and the base name."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from connectors.discovery import discover_sources
from connectors.exclude import is_excluded, relative_path
from connectors.s3_store import S3Store
from moesif_backfill import cli
from tests.datasets import payments_table, write_mapping, write_payments
from tests.standins.moto_firehose import LocalFirehose


@pytest.fixture(autouse=True)
def _no_inherited_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("MOESIF_BACKFILL_")]:
        monkeypatch.delenv(name)


def _data_dir(root: Path) -> Path:
    """A directory as exports land: data, a README beside it, notes in a subdirectory."""
    write_payments(root / "part-0.parquet", 1, 300)
    write_payments(root / "2026" / "part-1.parquet", 301, 200)
    (root / "README.txt").write_text("Invoice lines exported nightly. Owner: billing team.\n")
    (root / "docs").mkdir()
    (root / "docs" / "schema.md").write_text("# schema\n")
    return root


def test_patterns_match_the_relative_path_and_the_base_name() -> None:
    root = os.path.join(os.sep, "data", "exports")
    path = os.path.join(root, "docs", "README.txt")
    assert relative_path(path, root) == "docs/README.txt"
    assert relative_path(path, path) == "README.txt"  # a file given itself
    assert relative_path("s3://b/p/x/y.csv", "s3://b/p/") == "x/y.csv"
    assert relative_path("s3://b/p/x/y.csv", "s3://b/p") == "x/y.csv"
    for pattern in ("README.txt", "*.txt", "docs/*", "docs/README.txt", "**/README.txt", "*/*.txt"):
        assert is_excluded(path, root, [pattern]), pattern
    for pattern in ("readme.txt", "exports/*", "*.md", "other/*", "README"):
        assert not is_excluded(path, root, [pattern]), pattern
    assert not is_excluded(path, root, [])
    assert is_excluded("s3://b/p/2026/notes.md", "s3://b/p/", ["2026/*.md"])
    assert not is_excluded("s3://b/p/2026/data.csv", "s3://b/p/", ["2026/*.md"])


def test_a_directory_with_a_readme_runs_with_exclude(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_dir(tmp_path / "exports")
    mapping = str(write_mapping(tmp_path / "m.yaml"))
    # without --exclude the README stops the run before anything is read or sent
    assert cli.main(["validate", str(data), "--mapping", mapping]) == 2
    assert "README.txt" in capsys.readouterr().err
    found = discover_sources([str(data)], exclude=["README.txt", "docs/*"])
    assert [Path(s.path).relative_to(data).as_posix() for s in found] == [
        "2026/part-1.parquet",
        "part-0.parquet",
    ]
    # --dry-run: exactly the data files' rows
    summary = tmp_path / "summary.json"
    args = ["run", str(data), "--mapping", mapping, "--dry-run", "--quiet"]
    args += ["--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck")]
    args += ["--exclude", "*.txt", "--exclude", "*.md", "--summary-json", str(summary)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert json.loads(summary.read_text())["rows_read"] == 500


def test_exclude_from_the_environment_as_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_dir(tmp_path / "exports")
    mapping = str(write_mapping(tmp_path / "m.yaml"))
    monkeypatch.setenv("MOESIF_BACKFILL_EXCLUDE", "README.txt, docs/*")
    assert cli.main(["validate", str(data), "--mapping", mapping]) == 0, capsys.readouterr().err
    # the command line wins: only *.md left out, the README stops the run again
    assert cli.main(["validate", str(data), "--mapping", mapping, "--exclude", "*.md"]) == 2
    assert "README.txt" in capsys.readouterr().err


def test_excluding_everything_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_dir(tmp_path / "exports")
    mapping = str(write_mapping(tmp_path / "m.yaml"))
    assert cli.main(["validate", str(data), "--mapping", mapping, "--exclude", "*"]) == 2
    err = capsys.readouterr().err
    assert "every file it names is excluded by --exclude '*'" in err
    assert cli.main(["validate", str(data), "--mapping", mapping, "--exclude", " "]) == 2
    assert "must not be empty" in capsys.readouterr().err


@pytest.fixture
def bucket(moto_firehose: LocalFirehose) -> Iterator[tuple[Any, str]]:
    s3 = moto_firehose.s3_client()
    name = f"exclude-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    try:
        yield s3, name
    finally:
        listed = s3.list_objects_v2(Bucket=name).get("Contents", [])
        for item in listed:
            s3.delete_object(Bucket=name, Key=item["Key"])
        s3.delete_bucket(Bucket=name)


def test_an_s3_prefix_with_a_readme_runs_with_exclude(
    bucket: tuple[Any, str],
    moto_firehose: LocalFirehose,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3, name = bucket
    for key, start in (("usage/part-0.parquet", 1), ("usage/2026/part-1.parquet", 301)):
        sink = io.BytesIO()
        pq.write_table(payments_table(start, 300 if start == 1 else 200), sink)
        s3.put_object(Bucket=name, Key=key, Body=sink.getvalue())
    s3.put_object(Bucket=name, Key="usage/README.txt", Body=b"exported nightly\n")
    s3.put_object(Bucket=name, Key="usage/docs/schema.md", Body=b"# schema\n")
    prefix = f"s3://{name}/usage/"
    store = S3Store(endpoint_url=moto_firehose.endpoint_url, region=moto_firehose.region)
    try:
        found = discover_sources([prefix], s3=store, exclude=["README.txt", "docs/*"])
    finally:
        store.close()
    assert [s.path.removeprefix(prefix) for s in found] == [
        "2026/part-1.parquet",
        "part-0.parquet",
    ]
    mapping = str(write_mapping(tmp_path / "m.yaml"))
    base = ["validate", prefix, "--mapping", mapping]
    base += ["--s3-endpoint-url", moto_firehose.endpoint_url, "--region", moto_firehose.region]
    assert cli.main(base) == 2
    assert "README.txt" in capsys.readouterr().err
    summary = tmp_path / "summary.json"
    args = ["run", prefix, "--mapping", mapping, "--dry-run", "--quiet"]
    args += ["--s3-endpoint-url", moto_firehose.endpoint_url, "--region", moto_firehose.region]
    args += ["--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "ck")]
    args += ["--exclude", "README.txt", "--exclude", "**/*.md", "--summary-json", str(summary)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert json.loads(summary.read_text())["rows_read"] == 500
