"""Which Firehose stream each action goes to, when a run sends to several streams.

An action goes to stream ``i = H mod N``: *N* is the number of streams, in the order given
(``--stream a --stream b``), and *H* is the first 8 bytes of its ``transaction_id`` UUID read as
a big-endian unsigned 64-bit integer (its first 16 hex digits). So one ID always goes to the
same stream for the same stream list; another list (other order or count) routes differently,
which only matters for duplicates of a chunk resent after a failure, and Moesif deduplicates
those on ``transaction_id``. IDs made by the ID contract are UUIDv5 (SHA-1): these bytes are
uniform but for the 4 version bits at bits 12-15, so the split is even for any N. For IDs taken
from a column, UUIDv4 is as good; time-based UUIDs (v1, v7) spread well over a few streams,
since their low bits here vary fastest (v7: random bits).

Column-wise, no per-row Python: the ID is located in each encoded record (the top-level
``"transaction_id":"`` key, which `transforms.actions` writes before ``metadata`` and which no
escaped JSON string before it can contain), its hex digits gathered with numpy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEY = '"transaction_id":"'
# Character positions of the first 16 hex digits in "xxxxxxxx-xxxx-xxxx-...".
_HEX_POSITIONS = np.array([*range(8), *range(9, 13), *range(14, 18)], dtype=np.int64)
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)  # 16 nibbles, most significant first


def id_prefixes(records: pa.Array) -> np.ndarray:
    """The first 8 bytes of each record's transaction_id, as uint64 (big-endian)."""
    if len(records) == 0:
        return np.zeros(0, dtype=np.uint64)
    if isinstance(records, pa.ChunkedArray):
        records = records.combine_chunks()
    if pa.types.is_large_string(records.type) or pa.types.is_large_binary(records.type):
        records = records.cast(pa.large_binary())
        offset_type: type[np.integer] = np.int64
    else:
        records = records.cast(pa.binary())
        offset_type = np.int32
    found = np.asarray(pc.find_substring(records, KEY).to_numpy(zero_copy_only=False))
    if (found < 0).any():
        row = int(np.flatnonzero(found < 0)[0])
        raise ValueError(f"record {row} has no transaction_id: cannot pick its stream")
    _, offsets_buf, data_buf = records.buffers()
    assert offsets_buf is not None and data_buf is not None
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[
        records.offset : records.offset + len(records) + 1
    ]
    data = np.frombuffer(data_buf, dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64) + found.astype(np.int64) + len(KEY)
    if (starts + 36 > offsets[1:]).any():
        raise ValueError("a record's transaction_id is cut short: cannot pick its stream")
    nibbles = _HEX[data[starts[:, None] + _HEX_POSITIONS[None, :]]]
    if (nibbles == 255).any():
        row = int(np.flatnonzero((nibbles == 255).any(axis=1))[0])
        raise ValueError(f"record {row}'s transaction_id is not a UUID: cannot pick its stream")
    shifted = nibbles.astype(np.uint64) << _SHIFTS[None, :]
    prefixes: np.ndarray = np.bitwise_or.reduce(shifted, axis=1)
    return prefixes


def stream_indexes(records: pa.Array, n_streams: int) -> np.ndarray:
    """The stream (0..n_streams-1) of each record, by `id_prefixes` mod *n_streams*."""
    if n_streams < 1:
        raise ValueError("n_streams must be at least 1")
    if n_streams == 1:
        return np.zeros(len(records), dtype=np.int64)
    return (id_prefixes(records) % np.uint64(n_streams)).astype(np.int64)


def split_by_stream(records: pa.Array, n_streams: int) -> list[pa.Array]:
    """One array per stream (possibly empty), each in the records' original order."""
    if n_streams == 1:
        return [records]
    index = stream_indexes(records, n_streams)
    order = np.argsort(index, kind="stable")
    counts = np.bincount(index, minlength=n_streams)
    grouped = records.take(pa.array(order))
    parts: list[pa.Array] = []
    start = 0
    for count in counts.tolist():
        parts.append(grouped.slice(start, count))
        start += count
    return parts


def uuid_prefix(transaction_id: str) -> int:
    """Reference form of the hash for one ID (docs and tests): its first 8 bytes as an int."""
    return int(transaction_id.replace("-", "")[:16], 16)
