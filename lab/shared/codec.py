"""Typed JSON for the host-guest contract: dataclasses to JSON data and back, with every
key and type checked on the way in (standard library only, like the contract)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Callable, Literal, TypeVar


class ContractError(ValueError):
    """A job or action does not match the contract: `key` (a dotted path), what was given,
    and what is accepted."""

    def __init__(self, key: str, value: Any, expected: str, known: tuple[str, ...] | None = None):
        super().__init__(f"{key}: unknown key; known keys: {', '.join(known)}" if known is not None
                         else f"{key}: expected {expected}, got {value!r}")
        self.key, self.value, self.expected = key, value, expected


T = TypeVar("T")
#: Types with their own encoder or checker (the contract's actions).
Special = dict[type, Callable[..., Any]]


def encode(value: Any, special: Special | None = None) -> Any:
    """Dataclasses, lists and dicts as JSON data."""
    special = special or {}
    if type(value) in special:
        return special[type(value)](value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), special) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [encode(x, special) for x in value]
    if isinstance(value, dict):
        return {k: encode(v, special) for k, v in value.items()}
    return value


def decode(cls: type[T], data: Any, key: str, special: Special | None = None) -> T:
    """JSON data as `cls`, every key and type checked; `special` maps a type to the checker
    of its values (called with the value and its key)."""
    return typing.cast(T, _decode(cls, data, key, special or {}))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, value: Any, key: str, special: Special) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint in special:
        return special[hint](value, key)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _decode(next(a for a in args if a is not type(None)), value, key, special)
    if origin is Literal:
        if value not in args:
            raise ContractError(key, value, "one of " + ", ".join(map(str, args)))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ContractError(key, value, "a list")
        return [_decode(args[0], v, f"{key}[{i}]", special) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ContractError(key, value, "a mapping")
        return {_decode(args[0], k, key, special): _decode(args[1], v, f"{key}.{k}", special) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ContractError(key, value, f"a mapping ({hint.__name__})")
        hints = _hints(hint)
        fields = {f.name: f for f in dataclasses.fields(hint)}
        for name in value:
            if name not in fields:
                raise ContractError(f"{key}.{name}", value[name], "", tuple(fields))
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _decode(hints[name], value[name], f"{key}.{name}", special)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ContractError(f"{key}.{name}", None, f"`{name}` ({hint.__name__} needs it)")
        return hint(**kwargs)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContractError(key, value, "a number")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ContractError(key, value, {int: "an integer", str: "text", bool: "true or false"}[hint])
        return value
    raise ContractError(key, value, f"a value of a type the contract knows (not {hint!r})")
