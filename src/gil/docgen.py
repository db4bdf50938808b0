"""Reference pages generated from the code: every CLI command and every ``params.yaml`` key.

Why generated: a hand-written reference drifts the day someone adds an option. These functions read
the objects the program itself uses (the click command behind the Typer app, the pydantic models
that validate ``params.yaml``, the strategy registry), so a new option or key appears in the
documentation site without editing a page. MkDocs loads this file as a hook (``mkdocs.yml``) and
calls :func:`on_page_markdown` on every page while it builds.

Layering: only the documentation build imports this module; the core (data, model, strategies,
metrics, training) never does (``tests/test_imports.py``).
"""

from __future__ import annotations

import html
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKERS = {
    "<!-- gil:cli-reference -->": "cli",
    "<!-- gil:params-reference -->": "params",
    "<!-- gil:strategy-params-reference -->": "strategies",
}


def render(name: str) -> str:
    """The generated Markdown a marker stands for (imports the CLI and config only when asked)."""
    if name == "cli":
        import typer

        from gil.cli import app

        return cli_reference(typer.main.get_command(app))
    if name == "params":
        from gil.config import Config
        from gil.sweep.space import SweepConfig

        return params_reference(Config, free_sections={"sweep": SweepConfig})
    if name == "strategies":
        from gil.strategies import registry

        return strategy_params_reference(registry())
    raise ValueError(f"unknown reference {name!r}; choose one of {sorted(set(MARKERS.values()))}")


def expand_markers(markdown: str) -> str:
    """``markdown`` with every reference marker replaced by its generated Markdown."""
    for marker, name in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render(name))
    return markdown


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook (``hooks:`` in ``mkdocs.yml`` names this file): expand the markers of a page."""
    return expand_markers(markdown)


# --- CLI ---------------------------------------------------------------------------------------


def cli_reference(group: Any, prog: str = "gil") -> str:
    """Markdown for every command of a click group: usage, help text, and each option's help.

    ``group`` is duck-typed as click's ``Group`` (``typer.main.get_command(app)`` returns one, from
    Typer's bundled click), so the text is exactly what ``gil COMMAND --help`` prints.
    """
    root = group.context_class(group, info_name=prog)
    parts = [_escape(group.help or ""), ""]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = command.context_class(command, info_name=name, parent=root)
        usage = command.get_usage(ctx).removeprefix("Usage: ")
        parts += [f"## `{prog} {name}`", "", _escape(command.help or ""), "", "```text", usage, "```", ""]
        rows = [
            (record[0], record[1])
            for param in command.params
            if not getattr(param, "hidden", False) and (record := param.get_help_record(ctx)) is not None
        ]
        if rows:
            parts += ["| option | description |", "|---|---|"]
            parts += [f"| `{_cell(decl)}` | {_cell(_escape(text))} |" for decl, text in rows]
            parts.append("")
    return "\n".join(parts)


# --- params.yaml -------------------------------------------------------------------------------


def params_reference(
    model: type[BaseModel], prefix: str = "", free_sections: Mapping[str, type[BaseModel]] | None = None
) -> str:
    """Markdown tables of every key of ``model`` (key, type, default, description), section by section.

    A field typed as a model is a section of its own (recursed into); a list or mapping of models
    documents one entry (``tasks[]``, ``settings.<name>``). ``free_sections`` names fields that the
    model keeps as free mappings but that another model validates (``sweep``), so they are
    documented from that model.
    """
    parts: list[str] = []
    for path, section, doc in sections(model, prefix, free_sections or {}):
        parts += [f"### `{path}`" if path else "### top level", ""]
        if doc:
            parts += [_escape(doc), ""]
        parts += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in section.model_fields.items():
            key = f"{path}.{field.alias or name}" if path else field.alias or name
            parts.append(
                f"| `{key}` | {_cell(type_text(field))} | {_cell(default_text(field))} "
                f"| {_cell(_escape(field.description or ''))} |"
            )
        parts.append("")
    return "\n".join(parts)


def strategy_params_reference(strategies: Mapping[str, type], prefix: str = "strategies.<name>") -> str:
    """Markdown tables of every strategy's parameters, from its ``Params`` model, one per ``kind``.

    ``strategies`` maps ``kind`` to class (``gil.strategies.registry()``), so a new strategy file
    documents its parameters by existing.
    """
    parts: list[str] = []
    for kind in sorted(strategies):
        cls = strategies[kind]
        summary = (cls.__doc__ or "").strip().split("\n\n")[0]
        parts += [f"### `kind: {kind}`", "", _escape(" ".join(summary.split())), ""]
        params = cls.Params
        if not params.model_fields:
            parts += ["No parameters.", ""]
            continue
        parts += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in params.model_fields.items():
            parts.append(
                f"| `{prefix}.{name}` | {_cell(type_text(field))} | {_cell(default_text(field))} "
                f"| {_cell(_escape(field.description or ''))} |"
            )
        parts.append("")
    return "\n".join(parts)


def all_keys(
    model: type[BaseModel], prefix: str = "", free_sections: Mapping[str, type[BaseModel]] | None = None
) -> list[str]:
    """Every dotted key :func:`params_reference` documents (what a test checks the page against)."""
    keys = []
    for path, section, _ in sections(model, prefix, free_sections or {}):
        keys += [f"{path}.{f.alias or n}" if path else f.alias or n for n, f in section.model_fields.items()]
    return keys


def sections(
    model: type[BaseModel], path: str = "", free: Mapping[str, type[BaseModel]] | None = None
) -> Iterator[tuple[str, type[BaseModel], str]]:
    """(dotted path, model, docstring) of ``model`` and of every section below it, depth first."""
    free = free or {}
    yield path, model, " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    for name, field in model.model_fields.items():
        key = f"{path}.{field.alias or name}" if path else field.alias or name
        if key in free:
            yield from sections(free[key], key, free)
            continue
        inner, suffix = _inner_model(field.annotation)
        if inner is not None:
            yield from sections(inner, key + suffix, free)


def _inner_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds directly, as list items or as mapping values (with the path suffix)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args and _is_model(args[0]):
        return args[0], "[]"
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return args[1], ".<name>"
    return None, ""


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def type_text(field: FieldInfo) -> str:
    """A field's type in words, with its bounds: ``float > 0, < 1``; ``one of `a`, `b` or null``."""
    text = _annotation_text(field.annotation)
    bounds = []
    for item in field.metadata:
        for cls, attribute, sign in ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<")):
            if isinstance(item, cls):
                bounds.append(f"{sign} {getattr(item, attribute)}")
        if isinstance(item, MinLen):
            bounds.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
    return f"{text}, {', '.join(bounds)}" if bounds else text


def _annotation_text(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if _is_model(annotation):
        return "section (below)"
    if annotation is Path:
        return "path"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_annotation_text(arg) for arg in args)
    if origin is list:
        return f"list of {_annotation_text(args[0])}" if args else "list"
    if origin is tuple:
        return f"list of {_annotation_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_annotation_text(args[0])} to {_annotation_text(args[1])}" if args else "mapping"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """A field's default as it would be written in ``params.yaml`` (``required`` when it has none)."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{_yaml_value(value)}`"


def _yaml_value(value: Any) -> str:
    if value == "":
        return '""'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_yaml_value(item)}" for key, item in value.items()) + "}"
    return str(value)


# Markdown's inline syntax, made literal: emphasis (``train.*``), links, attribute lists.
_INERT = str.maketrans(
    {"\\": "\\\\", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "{": "&#123;", "}": "&#125;"}
)


def _outside_code(text: str, change: Callable[[str], str]) -> str:
    """``text`` with ``change`` applied to everything outside backtick code spans."""
    pieces = text.split("`")
    return "`".join(change(piece) if i % 2 == 0 else piece for i, piece in enumerate(pieces))


def _escape(text: str) -> str:
    """Plain or reST-flavoured text made literal in Markdown.

    ``<cls>`` must not become an HTML tag, ``train.*`` not emphasis, ``{kind: ...}`` not an
    attribute list (``attr_list`` reads braces at the end of a table cell); reST's double backticks
    become Markdown's single ones first, so code spans are found and kept.
    """
    return _outside_code(
        text.replace("``", "`"), lambda piece: html.escape(piece, quote=False).translate(_INERT)
    )


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell: one line, pipes outside code spans escaped."""
    return _outside_code(" ".join(text.split()), lambda piece: piece.replace("|", "\\|"))
