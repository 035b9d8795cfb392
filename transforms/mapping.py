"""The mapping file: how source columns become Moesif action fields.

A mapping is YAML validated by the pydantic models below. Every action field is either
``{column: NAME}`` or ``{value: CONSTANT}``; a bare string is shorthand for ``{column: NAME}``.
`load_mapping` reads and validates a mapping file; `transforms.schema_match` binds a mapping to
one file's schema.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import zoneinfo
from collections.abc import Mapping as MappingABC
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from moesif_backfill.errors import MappingError
from transforms.source_options import SourceOptions

ID_CONTRACT_VERSION = "v1"
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSource(_Strict):
    """Take the value from a source column.

    ``if_missing: omit`` lets input files lack the column: their rows are sent without the
    field (counted in the summary's ``sent_without_field``). Without it, a file that lacks a
    mapped column stops the run at preflight. It decides nothing about IDs or payloads of the
    files that have the column, so it is not part of the mapping's fingerprint.

    `type` (metadata fields only) forces the JSON type of the value: `string` sends every value
    as a JSON string (text as written; other types as the JSON number/boolean text, quoted),
    `number` sends JSON numbers and rejects a row whose value is not one. Unset, text sources
    type each metadata column by its values (pipeline.binding).
    """

    column: str = Field(min_length=1)
    if_missing: Literal["omit"] | None = None
    type: Literal["string", "number"] | None = None

    @model_serializer(mode="wrap")
    def _without_unset_options(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Leave the options out while unset: the mapping fingerprint of every mapping written
        # before they existed stays what it was (checkpoints still resume).
        data = handler(self)
        if isinstance(data, dict):
            for option in ("if_missing", "type"):
                if data.get(option) is None:
                    data.pop(option, None)
        return data


class ValueSource(_Strict):
    """Use the same constant for every row."""

    value: Scalar

    @field_validator("value")
    @classmethod
    def _finite(cls, v: Scalar) -> Scalar:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("a constant must be a finite number (JSON has no NaN or Infinity)")
        return v


def _shorthand(v: Any) -> Any:
    return {"column": v} if isinstance(v, str) else v


def _source_kind(v: Any) -> str | None:
    if isinstance(v, ColumnSource | ValueSource):
        return "column" if isinstance(v, ColumnSource) else "value"
    if isinstance(v, MappingABC):
        if "column" in v:
            return "column"
        if "value" in v:
            return "value"
    return None


FieldSource = Annotated[
    Annotated[ColumnSource, Tag("column")] | Annotated[ValueSource, Tag("value")],
    Discriminator(
        _source_kind,
        custom_error_type="field_source",
        custom_error_message="expected a column name, {column: NAME} or {value: CONSTANT}",
    ),
]


class TimeSource(_Strict):
    """The column that becomes ``request.time``."""

    column: str = Field(min_length=1)
    timezone: str = "UTC"
    unit: Literal["s", "ms", "us", "ns"] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {v!r} (e.g. 'UTC', 'Europe/Berlin')") from exc
        return v


class RequestFields(_Strict):
    uri: FieldSource | None = None
    ip_address: FieldSource | None = None
    user_agent_string: FieldSource | None = None

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if isinstance(data, MappingABC):
            return {k: _shorthand(v) for k, v in data.items()}
        return data


class TransactionIdSpec(_Strict):
    """How the stable transaction_id is made (ID contract v1, see docs/transaction-id.md)."""

    scope: str | None = Field(default=None, min_length=1)
    namespace: uuid.UUID | None = None
    key: list[str] | None = Field(default=None, min_length=1)
    column: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_way(self) -> TransactionIdSpec:
        if self.column is not None:
            if self.key or self.scope or self.namespace:
                raise ValueError(
                    "give either `column` (existing UUIDs) or `key` with `scope`/`namespace`, "
                    "not both"
                )
            return self
        if not self.key:
            raise ValueError(
                "missing `key`: list the source columns that identify a row, "
                "e.g. key: [invoice_line_id]"
            )
        if (self.scope is None) == (self.namespace is None):
            raise ValueError("give exactly one of `scope` (a name) or `namespace` (a UUID)")
        return self

    def namespace_uuid(self) -> uuid.UUID:
        if self.namespace is not None:
            return self.namespace
        assert self.scope is not None
        return uuid.uuid5(uuid.NAMESPACE_URL, "moesif-backfill:" + self.scope)


class MappingSpec(_Strict):
    """A whole mapping file."""

    action_name: FieldSource
    time: TimeSource
    transaction_id: TransactionIdSpec
    company_id: FieldSource | None = None
    user_id: FieldSource | None = None
    subscription_id: FieldSource | None = None
    session_token: FieldSource | None = None
    request: RequestFields = RequestFields()
    metadata: dict[str, FieldSource] = {}
    # How the input files are read (format, delimiter, header, ...): transforms.source_options.
    source: SourceOptions = SourceOptions()

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        if not isinstance(data, MappingABC):
            return data
        out = dict(data)
        for name in ("action_name", "company_id", "user_id", "subscription_id", "session_token"):
            if name in out:
                out[name] = _shorthand(out[name])
        if isinstance(out.get("time"), str):
            out["time"] = {"column": out["time"]}
        if isinstance(out.get("metadata"), MappingABC):
            out["metadata"] = {str(k): _shorthand(v) for k, v in out["metadata"].items()}
        return out

    @model_validator(mode="after")
    def _action_name_is_never_omitted(self) -> MappingSpec:
        if isinstance(self.action_name, ColumnSource) and self.action_name.if_missing:
            raise ValueError(
                "action_name cannot have if_missing: every action needs a name; give a "
                "constant ({value: ...}) for files without the column instead"
            )
        return self

    def column_fields(self) -> dict[str, ColumnSource]:
        """Every field that reads a column, by its label (company_id, request.uri,
        metadata.amount, ...); the time and transaction_id columns are not included."""
        labelled: list[tuple[str, FieldSource | None]] = [
            ("action_name", self.action_name),
            *self.string_fields().items(),
            *((f"request.{k}", v) for k, v in self.request_fields().items()),
            *((f"metadata.{k}", v) for k, v in self.metadata.items()),
        ]
        return {label: src for label, src in labelled if isinstance(src, ColumnSource)}

    @model_validator(mode="after")
    def _type_only_in_metadata(self) -> MappingSpec:
        fields = {"action_name": self.action_name, **self.string_fields()}
        fields.update({f"request.{k}": v for k, v in self.request_fields().items()})
        typed = [k for k, v in fields.items() if isinstance(v, ColumnSource) and v.type]
        if typed:
            raise ValueError(
                f"`type` applies to metadata fields only, not to {', '.join(typed)}: "
                "action_name, company_id, user_id, subscription_id, session_token and the "
                "request fields are always sent as strings, exactly as written"
            )
        return self

    def fingerprint(self) -> str:
        """A hash of everything that decides IDs and payloads (not comments or key order).

        The `source:` section is part of it (it decides which rows are read and how: a changed
        delimiter or `columns` list changes the rows behind every checkpointed position), in
        the settings that differ from the defaults only, so that a mapping without one, or with
        one that spells out the defaults, keeps the fingerprint it always had.
        """
        mapping = _without_if_missing(self.model_dump(mode="json", exclude={"source"}))
        source = self.source.model_dump(mode="json", exclude_defaults=True)
        if source.get("header") == (self.source.columns is None):
            del source["header"]  # what it is without `header:`
        if source:
            mapping["source"] = source
        body = json.dumps(
            {"contract": ID_CONTRACT_VERSION, "mapping": mapping},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def string_fields(self) -> dict[str, FieldSource]:
        """Top-level optional string fields in output order (action_name excluded)."""
        fields = {
            "company_id": self.company_id,
            "user_id": self.user_id,
            "subscription_id": self.subscription_id,
            "session_token": self.session_token,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def request_fields(self) -> dict[str, FieldSource]:
        fields = {
            "uri": self.request.uri,
            "ip_address": self.request.ip_address,
            "user_agent_string": self.request.user_agent_string,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def referenced_columns(self) -> list[str]:
        """Every source column the mapping reads, in a stable order, without repeats."""
        cols: list[str] = []
        sources: list[FieldSource | None] = [
            self.action_name,
            *self.string_fields().values(),
            *self.request_fields().values(),
            *self.metadata.values(),
        ]
        cols.extend(s.column for s in sources if isinstance(s, ColumnSource))
        cols.append(self.time.column)
        if self.transaction_id.column:
            cols.append(self.transaction_id.column)
        cols.extend(self.transaction_id.key or [])
        return list(dict.fromkeys(cols))

    def text_field_columns(self) -> list[str]:
        """Columns the string fields read (action_name, company_id, user_id, subscription_id,
        session_token, request.*): always sent as text, exactly as written."""
        sources = [self.action_name, *self.string_fields().values()]
        sources += self.request_fields().values()
        return list(dict.fromkeys(s.column for s in sources if isinstance(s, ColumnSource)))

    def metadata_columns(self, *, typed: bool) -> list[str]:
        """Columns metadata fields read with a `type:` (typed=True) or without one."""
        cols = [
            s.column
            for s in self.metadata.values()
            if isinstance(s, ColumnSource) and (s.type is not None) == typed
        ]
        return list(dict.fromkeys(cols))

    def key_columns(self) -> list[str]:
        tid = self.transaction_id
        return [tid.column] if tid.column else list(tid.key or [])


def _without_if_missing(dumped: Any) -> Any:
    """A dumped mapping without any `if_missing` option (not part of the fingerprint)."""
    if isinstance(dumped, dict):
        return {k: _without_if_missing(v) for k, v in dumped.items() if k != "if_missing"}
    return dumped


def _format_validation_error(path: str, exc: ValidationError) -> str:
    lines = [f"mapping file {path} is invalid:"]
    for err in exc.errors():
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
        # a tagged union repeats its tag ("value.value"): show it once
        parts = [p for i, p in enumerate(parts) if i + 1 == len(parts) or parts[i + 1] != p]
        loc = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README 'Mapping file')"
        lines.append(f"  - {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_mapping(data: Any, *, origin: str = "<mapping>") -> MappingSpec:
    if not isinstance(data, MappingABC):
        raise MappingError(f"mapping file {origin} must be a YAML mapping of field: source")
    try:
        return MappingSpec.model_validate(data)
    except ValidationError as exc:
        raise MappingError(_format_validation_error(origin, exc)) from None


def load_mapping(path: str | Path) -> MappingSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read mapping file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MappingError(f"mapping file {p}{where} is not valid YAML: {exc}") from None
    return parse_mapping(data, origin=str(p))
