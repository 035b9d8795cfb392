"""CLI flags made from settings model fields: the model is the one place of each default.

`field_flag(parser, RunSettings, "chunk_rows")` adds `--chunk-rows` with the field's type, its
description as help and "(default ...)" from the field's default. The flag's argparse default
is SUPPRESS: a flag not given is not in the namespace, and the model fills its default in.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

_SCALARS = (int, float, str, Path)


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
    **kw: Any,
) -> argparse.Action:
    """Add the flag of field `name` of `model` (see the module docstring)."""
    info = model.model_fields[name]
    flags = flags or (f"--{name.replace('_', '-')}",)
    kw.setdefault("default", argparse.SUPPRESS)
    if info.annotation is bool and "action" not in kw:
        kw["action"] = "store_true" if info.default is False else argparse.BooleanOptionalAction
    elif "action" not in kw and "type" not in kw:
        scalar = _scalar(info.annotation)
        if scalar is not None and scalar is not str:
            kw["type"] = scalar
    kw.setdefault("dest", name)
    return parser.add_argument(*flags, help=field_help(model, name, help), **kw)


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields of `model` given on the command line (flags not given are left out)."""
    return {k: v for k, v in vars(args).items() if k in model.model_fields}


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


__all__ = ["default_text", "field_flag", "field_help", "given", "mode_flags"]
