"""The one typed-config idiom: a :class:`Section` checks each field's type (``Literal`` for a
choice) and range when built, and names the key and what is accepted when a value is wrong.

Every section of the run's config (:mod:`alexnet_mp.config`), the data's and the profiler's is one.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, ClassVar, Literal

from .errors import ConfigError


class Section:
    """A typed config section; subclasses are ``@dataclass(kw_only=True, slots=True)``."""

    __slots__ = ()
    SECTION: ClassVar[str | None] = None
    """The TOML table, e.g. ``"training"``; None for command-line options (``--batch-size``)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            if _choices(hint) and value not in _choices(hint):
                self.require(f.name, False, " or ".join(map(repr, _choices(hint))))
            if not _type_ok(value, hint):
                raise ConfigError(f"{self.label(f.name)} = {value!r} has the wrong type; it must be {_describe(hint)}.")
            if hint is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
        self.check()

    def check(self) -> None:
        """Range checks beyond the types (each section its own)."""

    @classmethod
    def label(cls, key: str) -> str:
        return f"[{cls.SECTION}] {key}" if cls.SECTION else f"--{key.replace('_', '-')}"

    def require(self, key: str, ok: bool, accepted: str) -> None:
        """A ``ConfigError`` naming ``key``, its value and what is accepted, unless ``ok``."""
        if not ok:
            raise ConfigError(f"{self.label(key)} = {getattr(self, key)!r} is not accepted: {accepted}.")

    @classmethod
    def from_table(cls, table: Any, source: str = "defaults"):
        """The section from a TOML table, unknown keys named with the accepted ones."""
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{cls.SECTION}] must be a table of keys, got {table!r}.")
        accepted = [f.name for f in fields(cls)]
        unknown = [k for k in table if k not in accepted]
        if unknown:
            raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(f'{cls.SECTION}.{k}' for k in unknown)}; [{cls.SECTION}] accepts: "
                              f"{', '.join(accepted)}.")
        return cls(**table)


def _choices(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ')}s"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
            type(None): "absent"}.get(hint, str(hint))
