"""transaction_id: ID contract v1 (docs/transaction-id.md), column-wise.

    namespace      = uuid5(NAMESPACE_URL, "moesif-backfill:" + scope)   # or the namespace given
    name           = "v1" + "".join(part(v) for v in key values, in declared order)
    part(v)        = "|~" if v is null else "|" + str(len(utf8(t))) + ":" + t, t = canon(v)
    transaction_id = str(uuid5(namespace, name))

The names are built with Arrow string kernels; SHA-1 runs once per row through hashlib (the
only per-row Python step) and the UUID text is laid out with numpy, never through `uuid.UUID`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.canon import canon_value
from transforms.time_format import fixed_width_strings

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_DASHES = (8, 13, 18, 23)


def transaction_id_value(namespace: uuid.UUID, key_values: Sequence[object], *, tz: str) -> str:
    """Reference implementation for one row (tests, docs); raises a NoCanonicalText error for
    a key value without canonical text (NaN/Inf, a naive time inside a DST gap, ...)."""
    name = "v1"
    for v in key_values:
        if v is None:
            name += "|~"
        else:
            t = canon_value(v, tz=tz)
            name += f"|{len(t.encode('utf-8'))}:{t}"
    return str(uuid.uuid5(namespace, name))


def id_names(parts: Sequence[pa.Array]) -> pa.Array:
    """canon() texts of the key columns (nulls = null values) -> the v1 name of each row."""
    pieces = []
    for text in parts:
        length = pc.binary_length(text).cast(pa.string())
        piece = pc.binary_join_element_wise("|", length, ":", text, "")
        pieces.append(pc.fill_null(piece, "|~"))
    return pc.binary_join_element_wise("v1", *pieces, "")


def uuid5_array(namespace: uuid.UUID, names: pa.Array) -> pa.Array:
    """uuid5(namespace, name) for every name, as canonical lower-case 36-character strings."""
    ns = namespace.bytes
    sha1 = hashlib.sha1
    names_bytes = names.cast(pa.binary()).to_pylist()
    digests = b"".join([sha1(ns + n).digest() for n in names_bytes])
    return uuid_text(np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :16], version=5)


def uuid_text(raw: np.ndarray, *, version: int | None) -> pa.Array:
    """(n, 16) bytes -> UUID strings; with `version`, set the version and RFC 4122 variant."""
    b = np.array(raw, dtype=np.uint8, copy=True)
    if version is not None:
        b[:, 6] = (b[:, 6] & 0x0F) | (version << 4)
        b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    hexed = np.empty((len(b), 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[b >> 4]
    hexed[:, 1::2] = _HEX[b & 0x0F]
    out = np.empty((len(b), 36), dtype=np.uint8)
    out[:, 0:8] = hexed[:, 0:8]
    out[:, 9:13] = hexed[:, 8:12]
    out[:, 14:18] = hexed[:, 12:16]
    out[:, 19:23] = hexed[:, 16:20]
    out[:, 24:36] = hexed[:, 20:32]
    for pos in _DASHES:
        out[:, pos] = ord("-")
    return fixed_width_strings(out)


def existing_uuids(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """A column that already holds UUIDs -> (lower-case text, invalid mask).

    Accepts canonical 36-character strings (any case) and 16-byte binary UUIDs. Nulls are not
    invalid here (the caller reports them as a missing key).
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_fixed_size_binary(arr.type) and arr.type.byte_width == 16:
        raw = np.frombuffer(arr.fill_null(b"\0" * 16).buffers()[1], dtype=np.uint8)
        raw = raw[arr.offset * 16 : (arr.offset + len(arr)) * 16].reshape(-1, 16)
        text = uuid_text(raw, version=None)
        return pc.if_else(arr.is_valid(), text, pa.scalar(None, pa.string())), pa.array(
            np.zeros(len(arr), dtype=bool)
        )
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    ok = pc.match_substring_regex(text, pattern=_UUID_RE)
    invalid = pc.fill_null(pc.invert(ok), False)
    return pc.utf8_lower(text), invalid
