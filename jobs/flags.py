"""Command-line flags generated from the settings models (`actors.settings`): one definition of every setting, its
type, choices, bounds, default and help, whatever the door (CLI, job YAML, Serve YAML, Python).

A flag the user does not give is absent from the parsed namespace, so the model's own default applies; a value
given is validated by the model (an out-of-range `--top-p 2` is the same error as `top_p: 2` in a YAML).
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel


def _scalar(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse type, choices) of a field's annotation: `X | None` as X, a Literal as its choices."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else str
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return type(choices[0]), choices
    return annotation, None


def add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    dest: str,
    prefix: str = "",
    exclude: tuple[str, ...] = (),
    aliases: dict[str, list[str]] | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """`--{prefix}{field}` for every field of `model` (nested models as `--{prefix}{field}-{subfield}`), stored as
    `{dest}.{field}` when given. Booleans get `--x/--no-x`. `aliases`: field -> older flag spellings kept;
    `names`: field -> its flag instead of the generated one."""
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        flag = (names or {}).get(name) or f"--{prefix}{name.replace('_', '-')}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            add_settings_flags(parser, annotation, f"{dest}.{name}", f"{prefix}{name.replace('_', '-')}-")
            continue
        default = info.get_default(call_default_factory=True)
        help_text = f"{info.description or ''} (default: {default})".strip()
        flags = [flag, *(aliases or {}).get(name, [])]
        if annotation is bool:
            parser.add_argument(*flags, dest=f"{dest}.{name}", action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)  # fmt: skip
            continue
        kind, choices = _scalar(annotation)
        parser.add_argument(*flags, dest=f"{dest}.{name}", type=kind, choices=choices, default=argparse.SUPPRESS,
                            metavar=None if choices else name.upper(), help=help_text)  # fmt: skip


def given(args: argparse.Namespace, dest: str) -> dict[str, Any]:
    """The flags of `dest` the user gave, as a (nested) mapping for the settings model."""
    found: dict[str, Any] = {}
    for key, value in vars(args).items():
        if not key.startswith(dest + "."):
            continue
        path = key[len(dest) + 1 :].split(".")
        node = found
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return found
