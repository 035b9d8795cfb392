"""CLI flags made from settings model fields: the model is the one place of each default.

`field_flag(parser, RunSettings, "chunk_rows")` adds `--chunk-rows` with the field's type, its
description as help and "(default ...)" from the field's default. The flag's argparse default
is SUPPRESS: a flag not given is not in the namespace, and the model fills its default in.

Environment variables: every such flag (unless made with `env=False`: the one-shot flags
`--reset`, `--reprocess`) can also be given as `MOESIF_BACKFILL_<FLAG>` (`--chunk-rows`:
`MOESIF_BACKFILL_CHUNK_ROWS`). `field_flag` records an `EnvFlag` in the parser's defaults (so
each parsed namespace carries the list of its command's flags, no global registry), and
`apply_env` fills in, after parsing, each flag not given on the command line from its variable:
the command line wins. List fields take a comma-separated list, booleans true/false/1/0/yes/no
(pydantic's lax parsing); each value is validated against its field, and a bad one is a
ConfigError (exit 2) naming the variable. A required flag may come from its variable; without
either, `apply_env` says which of the two to give.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from moesif_backfill.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

_SCALARS = (int, float, str, Path)
ENV_PREFIX = "MOESIF_BACKFILL_"
ENV_FLAGS = "env_flags"  # the namespace attribute holding a command's EnvFlags


@dataclass(frozen=True)
class EnvFlag:
    """A flag that its environment variable `var` may give instead of the command line."""

    var: str
    option: str  # --chunk-rows
    dest: str
    model: type[BaseModel]
    field: str
    required: bool = False
    exclusive_with: tuple[str, ...] = ()  # dests that, given, make this flag not apply

    def parse(self, raw: str) -> Any:
        """`raw` as the field's value (a list from a comma-separated list); ConfigError."""
        info = self.model.model_fields[self.field]
        annotation: Any = info.annotation
        if info.metadata:  # the field's constraints (ge=, min_length=...)
            annotation = typing.Annotated[(annotation, *info.metadata)]
        value: Any = raw.strip()
        if typing.get_origin(info.annotation) is list:
            value = [part.strip() for part in raw.split(",") if part.strip()]
        try:
            return TypeAdapter(annotation).validate_python(value)
        except ValidationError as exc:
            why = "; ".join(e["msg"] for e in exc.errors())
            raise ConfigError(
                f"environment variable {self.var}={raw!r} (for {self.option}): {why}"
            ) from None


def env_var(option: str) -> str:
    """The environment variable of a flag: `--chunk-rows` -> MOESIF_BACKFILL_CHUNK_ROWS."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def _scalar(annotation: Any) -> Any:
    """int / float / str / Path for `T` or `T | None`; None for anything else."""
    if annotation in _SCALARS:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1 and inner[0] in _SCALARS:
            return inner[0]
    return None


def default_text(model: type[BaseModel], name: str) -> str:
    """ " (default X)" for a field with a default worth showing, else ""."""
    info = model.model_fields[name]
    if info.is_required():
        return ""
    default = info.get_default(call_default_factory=True)
    if default is None or default in ([], {}) or default is False:
        return ""
    if default is True:
        return " (default: on)"
    return f" (default {default:g})" if isinstance(default, float) else f" (default {default})"


def field_help(model: type[BaseModel], name: str, help: str | None = None) -> str:
    """The help of `name`'s flag: `help` or the field's description, with its default. The
    text is escaped for argparse ('%' doubled)."""
    text = help or model.model_fields[name].description or name.replace("_", " ")
    return (text + default_text(model, name)).replace("%", "%%")


def field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    name: str,
    *flags: str,
    help: str | None = None,
    env: bool = True,
    exclusive_with: tuple[str, ...] = (),
    **kw: Any,
) -> argparse.Action:
    """Add the flag of field `name` of `model` (see the module docstring). `env`: the flag may
    also come from its environment variable; `exclusive_with`: not from it when one of these
    dests is given (the other flags of its mutually exclusive group)."""
    info = model.model_fields[name]
    flags = flags or (f"--{name.replace('_', '-')}",)
    kw.setdefault("default", argparse.SUPPRESS)
    text = field_help(model, name, help)
    if env:
        var = env_var(flags[0])
        flag = EnvFlag(
            var,
            flags[0],
            kw.get("dest", name),
            model,
            name,
            required=kw.pop("required", False),
            exclusive_with=exclusive_with,
        )
        parser.set_defaults(**{ENV_FLAGS: (*(parser.get_default(ENV_FLAGS) or ()), flag)})
        text += f" (required: this or ${var})" if flag.required else f" [${var}]"
    if typing.get_origin(info.annotation) is list:
        kw.setdefault("action", "append")  # repeatable
    if info.annotation is bool and "action" not in kw:
        kw["action"] = "store_true" if info.default is False else argparse.BooleanOptionalAction
    elif "action" not in kw and "type" not in kw:
        scalar = _scalar(info.annotation)
        if scalar is not None and scalar is not str:
            kw["type"] = scalar
    kw.setdefault("dest", name)
    return parser.add_argument(*flags, help=text, **kw)


def apply_env(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill the flags of `args`' command not given on the command line from their environment
    variables (see the module docstring); ConfigError for a bad value or a missing required
    flag. Empty variables count as unset."""
    flags: tuple[EnvFlag, ...] = vars(args).pop(ENV_FLAGS, None) or ()
    for flag in flags:
        if hasattr(args, flag.dest) or any(getattr(args, d, None) for d in flag.exclusive_with):
            continue  # the command line wins
        raw = environ.get(flag.var, "")
        if raw.strip():
            setattr(args, flag.dest, flag.parse(raw))
        elif flag.required:
            raise ConfigError(f"give {flag.option} (or set the environment variable {flag.var})")


def env_flags(parser: argparse.ArgumentParser) -> tuple[EnvFlag, ...]:
    """The EnvFlags of a (sub)parser: for docs and tests."""
    return tuple(parser.get_default(ENV_FLAGS) or ())


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` given on the command line (flags not given are left out)."""
    return {k: v for k, v in vars(args).items() if k in model.model_fields}


def sink_flags(
    p: argparse.ArgumentParser, model: type[BaseModel], *, validate: bool = False
) -> None:
    """--sink and the options of --sink moesif (run, nightly, range, redrive; `validate`: the
    two that decide which actions would be rejected). The application id has no flag: it
    comes from MOESIF_APPLICATION_ID or the Secret block --moesif-app-id-block names."""
    if validate:
        field_flag(
            p,
            model,
            "sink",
            choices=["firehose", "moesif"],
            help="as for run: --sink moesif checks actions against --moesif-action-max-bytes "
            "(no application id needed, nothing sent)",
        )
        field_flag(p, model, "moesif_action_max_bytes", metavar="BYTES")
        return
    field_flag(p, model, "sink", choices=["firehose", "moesif"])
    field_flag(p, model, "moesif_url", metavar="URL")
    field_flag(p, model, "moesif_app_id_block", metavar="NAME")
    field_flag(p, model, "moesif_batch_max_bytes", metavar="BYTES")
    field_flag(p, model, "moesif_action_max_bytes", metavar="BYTES")


def mode_flags(p: argparse.ArgumentParser) -> None:
    """--prefect / --no-prefect (README "Direct or Prefect")."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--prefect",
        dest="prefect",
        action="store_const",
        const=True,
        default=None,
        help="run as a Prefect flow run (needs a configured Prefect API; see modes below)",
    )
    group.add_argument(
        "--no-prefect",
        dest="prefect",
        action="store_const",
        const=False,
        help="run directly, without Prefect, even when a Prefect API is configured",
    )


__all__ = [
    "ENV_PREFIX",
    "EnvFlag",
    "apply_env",
    "default_text",
    "env_flags",
    "env_var",
    "field_flag",
    "field_help",
    "given",
    "mode_flags",
    "sink_flags",
]
