"""`moesif-backfill sql`: print the query that computes `transaction_id` in a warehouse.

    moesif-backfill sql --mapping mapping.yaml --sample FILE --dialect duckdb|snowflake|bigquery
                        [--table EXPR] [--id-column NAME]

Only the query goes to stdout (so that `> ids.sql` or a pipe into the warehouse's client works);
errors go to stderr with exit 2. The key columns' types come from `--sample`, one file of the
export: its Parquet footer, or for CSV/NDJSON the header with the key columns read as the text
the export wrote (transforms.id_sql, docs/transaction-id.md "In the warehouse").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transforms.sql_dialects import DIALECTS, PLACEHOLDER_TABLE


def add_sql_parser(sub: Any) -> None:
    """Register `sql` on the CLI's subparsers (`sub`: argparse's subparsers action)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "sql",
        help="print a SQL query that computes transaction_id in a warehouse (see 'Reconciling')",
        description="Print (on stdout, nothing else) a query selecting the export's columns "
        "plus transaction_id computed by ID contract v1 in the warehouse.",
    )
    p.add_argument("--mapping", required=True, type=Path, help="mapping YAML file")
    p.add_argument(
        "--sample",
        required=True,
        metavar="FILE",
        help="one file of the export (Parquet, CSV or NDJSON): gives the key columns' types",
    )
    p.add_argument("--dialect", required=True, choices=DIALECTS, help="the warehouse's SQL")
    p.add_argument(
        "--table",
        default=PLACEHOLDER_TABLE,
        metavar="EXPR",
        help="the table (or any FROM expression) holding the export "
        f"(default: {PLACEHOLDER_TABLE})",
    )
    p.add_argument(
        "--id-column",
        default="transaction_id",
        metavar="NAME",
        help="name of the computed column (default: transaction_id)",
    )


def main_sql(args: argparse.Namespace) -> int:
    from moesif_backfill.errors import BackfillError  # noqa: PLC0415

    try:
        query = build_query(
            args.mapping,
            args.sample,
            dialect_name=args.dialect,
            table=args.table,
            id_column=args.id_column,
        )
    except BackfillError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    sys.stdout.write(query + "\n")
    return 0


def build_query(
    mapping: Path | str,
    sample: str,
    *,
    dialect_name: str,
    table: str = PLACEHOLDER_TABLE,
    id_column: str = "transaction_id",
) -> str:
    """The query for `mapping` over the export `sample` belongs to (ConfigError subclasses for
    a mapping, sample or key type the query cannot serve)."""
    # Lazily, like the rest of the CLI: `--help` answers without loading pyarrow.
    from connectors.discovery import discover_sources  # noqa: PLC0415
    from connectors.readers import read_schema  # noqa: PLC0415
    from connectors.s3_errors import is_s3  # noqa: PLC0415
    from connectors.s3_store import S3Store  # noqa: PLC0415
    from moesif_backfill.errors import ConfigError, MappingError  # noqa: PLC0415
    from transforms.id_sql import key_columns_from_schema, transaction_id_sql  # noqa: PLC0415
    from transforms.mapping import load_mapping  # noqa: PLC0415
    from transforms.schema_match import resolve_column  # noqa: PLC0415

    spec = load_mapping(mapping)
    tid = spec.transaction_id
    if tid.column is not None:
        raise MappingError(
            f"mapping {mapping}: transaction_id is taken from column {tid.column!r} (existing "
            "UUIDs, sent trimmed and lower-cased): there is no ID to compute; `sql` needs "
            "`key` with `scope` or `namespace`"
        )
    assert tid.key is not None
    s3 = S3Store() if is_s3(str(sample)) else None  # boto3's own credentials and endpoint
    found = discover_sources([sample], spec.source, s3=s3)
    if len(found) != 1:
        raise ConfigError(
            f"--sample {sample} matches {len(found)} files; give one file of the export"
        )
    src = found[0]
    schema = read_schema(src, options=spec.source, s3=s3)
    names = list(schema.names)
    key = [resolve_column(k, names, origin=src.path, field="transaction_id") for k in tid.key]
    text_sample = src.format in ("csv", "ndjson")
    if text_sample:  # key columns as the text the export wrote, as the backfill reads them
        schema = read_schema(src, text_columns=key, options=spec.source, s3=s3)
    keys = key_columns_from_schema(key, schema, text_sample=text_sample)
    tz = spec.time.timezone
    return transaction_id_sql(
        tid.namespace_uuid(),
        keys,
        names,
        tz=tz,
        dialect_name=dialect_name,  # type: ignore[arg-type]
        table=table,
        id_column=id_column,
        header=_header(spec.transaction_id.scope, tid.namespace_uuid(), keys, tz, text_sample),
    )


def _header(
    scope: str | None, namespace: Any, keys: Sequence[Any], tz: str, text_sample: bool
) -> list[str]:
    kinds = {
        "text": "text as is",
        "integer": "integer digits",
        "boolean": "true/false",
        "date": "YYYY-MM-DD",
        "timestamp_tz": "timestamp: its instant in UTC",
        "timestamp_naive": f"naive timestamp: wall-clock time in {tz}",
    }
    named = (
        f"scope {_one_line(scope)} -> namespace {namespace}" if scope else f"namespace {namespace}"
    )
    lines = [
        "transaction_id by moesif-backfill ID contract v1 (docs/transaction-id.md)",
        named,
        "key, in order: " + ", ".join(f"{_one_line(k.name)} ({kinds[k.kind]})" for k in keys),
        "transaction_id is NULL where moesif-backfill rejects the row: every key value null,",
        "a naive key time inside a DST gap, a key time outside years 0001-9999 in UTC",
    ]
    if text_sample:
        lines.append(
            "text export: load the key columns as text exactly as written (000123 stays 000123)"
        )
    return lines


def _one_line(text: str | None) -> str:
    return " ".join(str(text).split())
