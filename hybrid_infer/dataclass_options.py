"""Command-line options generated from settings dataclasses, so each is defined once.

An option is a dataclass field: `--name-with-hyphens` (a trailing `_s`, for seconds,
dropped: `idle_timeout_s` is `--idle-timeout`), its type from the field's annotation,
its help from the class docstring's `name: text` entry, its default the field's own.
The values a user gives are passed to the dataclass, whose own checks then run at
parse time: a bad value is a usage error before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

#: Fields that take one of a fixed set of values: field name -> the values.
Choices = dict[str, tuple]


def option_name(field_name: str) -> str:
    return "--" + field_name.removesuffix("_s").replace("_", "-")


def field_docs(cls) -> dict[str, str]:
    """Each field's text in `cls`'s docstring: lines `name: text` (or `a, b: text`, for
    several fields), continued by the lines up to the next such entry. A field named in
    several entries gets their texts in order, its own entry first."""
    names = {f.name for f in dataclasses.fields(cls)}
    entries: list[tuple[list[str], list[str]]] = []
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines()[1:]:
        match = re.match(r"^([a-z_]+(?:, [a-z_]+)*): (.*)$", line)
        if match and set(match.group(1).split(", ")) <= names:
            entries.append((match.group(1).split(", "), [match.group(2)]))
        elif entries and line.strip():
            entries[-1][1].append(line.strip())
        elif entries:
            entries.append(([], []))  # a blank line ends the entry
    docs: dict[str, list[str]] = {}
    for alone in (True, False):
        for fields_named, lines in entries:
            if lines and (len(fields_named) == 1) == alone:
                for name in fields_named:
                    docs.setdefault(name, []).append(" ".join(lines))
    return {name: " ".join(texts) for name, texts in docs.items()}


def _value_type(annotation) -> type:
    """int for `int | None`, and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_dataclass_options(parser, cls, *, choices: Choices | None = None,
                          only: tuple[str, ...] | None = None,
                          defaults: dict | None = None,
                          docs: dict[str, str] | None = None) -> None:
    """Add one option per field of `cls` (or those in `only`) to `parser` (a parser or an
    argument group). Unless given, an option's value is None: the field's default then
    applies (dataclass_values leaves it out). `defaults` replaces some fields' defaults
    for this parser (field name -> value); `docs`, the help texts taken from the class
    docstring (field_docs)."""
    choices, defaults = choices or {}, defaults or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls) if docs is None else docs
    for field in dataclasses.fields(cls):
        if only is not None and field.name not in only:
            continue
        kind = _value_type(hints[field.name])
        text = docs.get(field.name, "").replace("%", "%%")
        default = defaults.get(field.name, field.default)
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if default is not dataclasses.MISSING and default is not None:
            text += f" (default: {default})"
        options = {"dest": field.name, "default": defaults.get(field.name), "help": text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            # numbers and text convert here; other types (a port range) are given as
            # text, which the dataclass itself parses and checks
            options["type"] = kind if kind in (int, float, str) else str
            if field.name in choices:
                options["choices"] = [c for c in choices[field.name] if c is not None]
            if field.name not in choices:
                options["metavar"] = option_name(field.name)[2:].replace("-", "_").upper()
        parser.add_argument(option_name(field.name), **options)


def dataclass_values(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` the command line gave (None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def with_option_names(message: str, *classes) -> str:
    """A dataclass's error message as the command line's: its field names (whole words)
    written as the options that set them (batch_size -> --batch-size)."""
    names = sorted({f.name for cls in classes for f in dataclasses.fields(cls)}, key=len,
                   reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?!\w)")
    return pattern.sub(lambda match: option_name(match.group(1)), message)


def _whole_number(minimum: int, expected: str):
    """An argparse type: a whole number >= `minimum` (its error is a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = _whole_number(1, "a positive whole number")
non_negative_int = _whole_number(0, "a whole number >= 0")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value
