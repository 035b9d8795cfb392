"""Arrow record batch -> Moesif action JSON records, rejects and counters. Pure and column-wise.

Every accepted row becomes one JSON object, with fields in this order and nulls omitted:

    {"action_name", "request": {"time", "uri"?, "ip_address"?, "user_agent_string"?},
     "company_id"?, "user_id"?, "subscription_id"?, "session_token"?, "transaction_id",
     "metadata"?}

Each optional piece is a string column holding `,"field":<json>` or null; one
`binary_join_element_wise` call glues the pieces of all rows together.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.canon import NONEXISTENT_REASON, canon_array, canon_value, nonexistent_times
from transforms.ids import existing_uuids, id_names, uuid5_array
from transforms.jsonfrag import (
    Quoted,
    join_field,
    json_constant,
    json_string,
    metadata_value,
    string_field,
    time_text,
    typed_metadata_value,
)
from transforms.mapping import ColumnSource, FieldSource, MappingSpec
from transforms.times import to_epoch_us

MAX_ACTION_BYTES = 1_000_000

# Reject reasons, in the order they are checked (the first that applies is reported).
R_KEY_MISSING = "missing transaction_id key value"
R_KEY_NONFINITE = "non-finite transaction_id key value (NaN or infinity)"
R_KEY_OUT_OF_RANGE = "transaction_id key timestamp outside years 0001-9999 in UTC"
R_KEY_NONEXISTENT = NONEXISTENT_REASON  # a template: {value} and {zone} name the row's time
R_BAD_UUID = "invalid UUID in transaction_id column"
R_NAME_MISSING = "missing action_name"
R_TIME_MISSING = "missing time"
R_TIME_BAD = "unparseable time"
R_NOT_A_NUMBER = "metadata {key} is not a number (type: number)"
R_TOO_LARGE = f"action over {MAX_ACTION_BYTES:,} bytes"


@dataclass
class ActionBatch:
    """The result of one batch: records for accepted rows, and the rejected rows."""

    records: pa.Array  # string: one JSON action per accepted row
    accepted: np.ndarray  # int64 row positions (within the input batch) of `records`
    rejected: np.ndarray  # int64 row positions of rejected rows
    reasons: list[str]  # one reason per rejected row
    epoch_us: pa.Array  # int64 request time of accepted rows (UTC microseconds)
    counters: dict[str, int] = field(default_factory=dict)
    # Of every input row (for the ID ledger): its transaction_id, null where the row has no
    # usable key; its request time (int64 UTC microseconds), null where missing/unparseable.
    row_ids: pa.Array | None = None
    row_times_us: pa.Array | None = None

    @property
    def min_time_us(self) -> int | None:
        if len(self.epoch_us) == 0:
            return None
        v = pc.min(self.epoch_us).as_py()
        return None if v is None else int(v)


def _piece(prefix: str, values: Quoted | str) -> pa.Array | str:
    if isinstance(values, str):
        return prefix + values
    return join_field(prefix, values)


def _source(batch: pa.RecordBatch, src: FieldSource, tz: str) -> Quoted | str:
    """A string field's JSON literal: a column (nulls = omit) or a constant."""
    if isinstance(src, ColumnSource):
        return string_field(batch.column(src.column), tz=tz)
    v = src.value  # a constant is converted with canon() too: true -> "true", 1.0 -> "1"
    return json_constant(
        str(v) if isinstance(v, float) and not math.isfinite(v) else canon_value(v)
    )


class Rejects:
    """Accumulates the first reason that applies to each row."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, -1, dtype=np.int32)
        self.labels: list[str] = []

    def add(self, mask: np.ndarray | pa.Array, label: str) -> None:
        m = mask if isinstance(mask, np.ndarray) else _np_bool(mask)
        if not m.any():
            return
        code = len(self.labels)
        self.labels.append(label)
        self.reason[(self.reason < 0) & m] = code

    def add_each(self, rows: np.ndarray, labels: list[str]) -> None:
        """A reason of its own for each of `rows` (distinct positions): one naming the row's
        value. Rows that already have a reason keep it."""
        free = self.reason[rows] < 0
        if not free.any():
            return
        first = len(self.labels)
        self.labels.extend(label for label, f in zip(labels, free.tolist(), strict=True) if f)
        self.reason[rows[free]] = np.arange(first, len(self.labels), dtype=np.int32)

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.reason < 0)


def _np_bool(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _transaction_ids(batch: pa.RecordBatch, spec: MappingSpec, rej: Rejects) -> pa.Array:
    """The transaction_id of every row (ID contract v1), flagging rows without a usable key."""
    tid = spec.transaction_id
    if tid.column is not None:
        ids, invalid = existing_uuids(batch.column(tid.column))
        rej.add(ids.is_null(), R_KEY_MISSING)
        rej.add(invalid, R_BAD_UUID)
        return ids
    n = batch.num_rows
    texts, all_null = [], np.ones(n, dtype=bool)
    nonfinite = np.zeros(n, dtype=bool)
    out_of_range = np.zeros(n, dtype=bool)  # a timestamp the ID contract cannot write
    gap_reason: dict[int, str] = {}  # naive key times inside a DST gap (first key column wins)
    for col in tid.key or []:
        column = batch.column(col)
        text, bad = canon_array(column, tz=spec.time.timezone)
        t = column.type
        if pa.types.is_timestamp(t.value_type if pa.types.is_dictionary(t) else t):
            gap_rows, reasons = nonexistent_times(column, bad, tz=spec.time.timezone)
            for row, reason in zip(gap_rows.tolist(), reasons, strict=True):
                gap_reason.setdefault(row, reason)
            in_range_bad = bad.copy()
            in_range_bad[gap_rows] = False
            out_of_range |= in_range_bad
        else:
            nonfinite |= bad
        all_null &= _np_bool(text.is_null()) & ~bad
        texts.append(text)
    rej.add(all_null, R_KEY_MISSING)
    rej.add(nonfinite, R_KEY_NONFINITE)
    rej.add(out_of_range, R_KEY_OUT_OF_RANGE)
    if gap_reason:
        rows = np.fromiter(gap_reason, dtype=np.int64, count=len(gap_reason))
        rej.add_each(rows, list(gap_reason.values()))
    return uuid5_array(tid.namespace_uuid(), id_names(texts))


def too_large_reason(max_action_bytes: int) -> str:
    """The reject reason of an action over `max_action_bytes` (R_TOO_LARGE at the default)."""
    return f"action over {max_action_bytes:,} bytes"


def build_actions(
    batch: pa.RecordBatch,
    spec: MappingSpec,
    *,
    number_text: Collection[str] = (),
    max_action_bytes: int = MAX_ACTION_BYTES,
) -> ActionBatch:
    """Turn one batch (columns named as in the mapping) into actions and rejects.

    `max_action_bytes`: a larger action is rejected (`too_large_reason`), never sent: the
    sink's limit (Moesif's 1 MB event limit; `--sink moesif` may set a lower one).

    `number_text`: columns that hold numbers as the text they were written as (metadata
    columns of text sources, see `pipeline.binding`); their metadata values are JSON numbers with
    those digits (metadata fields with a `type:` follow it instead).
    """
    n = batch.num_rows
    tz = spec.time.timezone
    rej = Rejects(n)
    counters = {"metadata_nonfinite_omitted": 0}

    ids = _transaction_ids(batch, spec, rej)
    key_bad = rej.reason >= 0  # the only reasons so far are the key's
    row_ids = (
        pc.if_else(pa.array(key_bad), pa.scalar(None, pa.string()), ids) if key_bad.any() else ids
    )

    # action_name
    name = _source(batch, spec.action_name, tz)
    if isinstance(name, Quoted):
        rej.add(name.inner.is_null(), R_NAME_MISSING)

    # time
    time_col = batch.column(spec.time.column)
    epoch_us, unparseable = to_epoch_us(time_col, tz=tz, unit=spec.time.unit)
    rej.add(time_col.is_null(), R_TIME_MISSING)
    rej.add(unparseable, R_TIME_BAD)

    pieces: list[pa.Array | str] = (
        ['{"action_name":"', name.inner, '","request":{"time":"']
        if isinstance(name, Quoted)
        else ['{"action_name":' + name + ',"request":{"time":"']
    )
    pieces.append(time_text(epoch_us))
    pieces.append('"')
    for key, src in spec.request_fields().items():
        pieces.append(_piece(f',"{key}":', _source(batch, src, tz)))
    pieces.append("}")
    for key, src in spec.string_fields().items():
        pieces.append(_piece(f',"{key}":', _source(batch, src, tz)))
    pieces.extend([',"transaction_id":"', ids, '"'])
    omitted = np.zeros(n, dtype=np.int64)  # metadata values without a JSON form, per row
    if spec.metadata:
        pieces.append(_metadata(batch, spec, tz, omitted, number_text=set(number_text), rej=rej))
    pieces.append("}")

    records = pc.binary_join_element_wise(*pieces, "", null_handling="replace", null_replacement="")
    rej.add(
        pc.greater(pc.binary_length(records), max_action_bytes),
        too_large_reason(max_action_bytes),
    )

    ok = rej.ok
    counters["metadata_nonfinite_omitted"] = int(omitted[ok].sum())  # in actions sent only
    accepted = np.flatnonzero(ok)
    rejected = np.flatnonzero(~ok)
    if len(rejected):
        keep = pa.array(ok)
        records = pc.filter(records, keep)
        epoch_kept = pc.filter(epoch_us, keep)
    else:
        epoch_kept = epoch_us
    labels = rej.labels
    return ActionBatch(
        records=records,
        accepted=accepted,
        rejected=rejected,
        reasons=[labels[c] for c in rej.reason[rejected]],
        epoch_us=epoch_kept,
        counters=counters,
        row_ids=row_ids,
        row_times_us=epoch_us,
    )


def row_ids_and_times(batch: pa.RecordBatch, spec: MappingSpec) -> tuple[pa.Array, pa.Array]:
    """The transaction_id (null without a usable key) and request time (int64 UTC epoch
    microseconds, null when missing or unparseable) of every row, as `build_actions` gives
    them in `ActionBatch.row_ids` / `row_times_us`: for rows that are not built into actions
    (outside the time window)."""
    rej = Rejects(batch.num_rows)
    ids = _transaction_ids(batch, spec, rej)
    key_bad = rej.reason >= 0
    if key_bad.any():
        ids = pc.if_else(pa.array(key_bad), pa.scalar(None, pa.string()), ids)
    us, _bad = to_epoch_us(
        batch.column(spec.time.column), tz=spec.time.timezone, unit=spec.time.unit
    )
    return ids, us


def _metadata(
    batch: pa.RecordBatch,
    spec: MappingSpec,
    tz: str,
    omitted: np.ndarray,
    *,
    number_text: set[str],
    rej: Rejects,
) -> pa.Array | str:
    """The `,"metadata":{...}` piece; null (omitted) for rows whose values are all null.
    Adds to `omitted` (per row) the values left out for having no JSON form, and rejects the
    rows whose value of a `type: number` field is not a number."""
    parts: list[pa.Array | str] = []
    for key, src in spec.metadata.items():
        label = json_constant(key)
        if isinstance(src, ColumnSource) and src.type is not None:
            value, left_out, bad = typed_metadata_value(batch.column(src.column), src.type, tz=tz)
            rej.add(bad, R_NOT_A_NUMBER.format(key=label))
            omitted += left_out
            parts.append(join_field(f",{label}:", value))
        elif isinstance(src, ColumnSource):
            value, left_out = metadata_value(
                batch.column(src.column), tz=tz, number_text=src.column in number_text
            )
            omitted += left_out
            parts.append(join_field(f",{label}:", value))
        else:
            parts.append(f",{label}:{json_constant(src.value)}")
    if all(isinstance(p, str) for p in parts):
        return ',"metadata":{' + "".join(str(p) for p in parts)[1:] + "}"
    body = pc.binary_join_element_wise(*parts, "", null_handling="replace", null_replacement="")
    inner = pc.utf8_slice_codeunits(body, 1)
    wrapped = pc.binary_join_element_wise(',"metadata":{', inner, "}", "")
    return pc.if_else(pc.equal(pc.binary_length(body), 0), pa.scalar(None, pa.string()), wrapped)


def time_bounds(arr: pa.Array, spec: MappingSpec) -> tuple[pa.Array, np.ndarray]:
    """The request time of every row (UTC epoch microseconds) for preflight checks."""
    return to_epoch_us(arr, tz=spec.time.timezone, unit=spec.time.unit)


__all__ = [
    "MAX_ACTION_BYTES",
    "ActionBatch",
    "build_actions",
    "json_string",
    "row_ids_and_times",
    "time_bounds",
    "too_large_reason",
]
