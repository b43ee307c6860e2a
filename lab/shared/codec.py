"""Typed JSON for the host-guest contract: records to JSON data and back, with every key
and type checked on the way in (standard library only, like the contract).

The contract's types are `record`s, not dataclasses: L1 imports the contract for every
scenario, and under TCG `import dataclasses` (which pulls in inspect, ast, dis) and the
code each @dataclass generates and compiles cost 0.7 s a scenario (python3 -X importtime in
L1). A record is a frozen dataclass to mypy (dataclass_transform) and, at run time, a
class with one shared __init__ that nothing is compiled for."""

from __future__ import annotations

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


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: A field without a default.
MISSING: Any = _Missing()


class Field:
    """One field of a record: its name, and its default or the factory of its default."""

    __slots__ = ("name", "default", "default_factory")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING):
        self.name = ""
        self.default, self.default_factory = default, default_factory

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not MISSING else self.default


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A record field's default made afresh for each record (a list, a dict)."""
    return Field(default, default_factory)


class FrozenError(AttributeError):
    pass


def _has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    fields: tuple[Field, ...] = type(self).__record_fields__
    if len(args) > len(fields):
        raise TypeError(f"{type(self).__name__}() takes {len(fields)} arguments, {len(args)} were given")
    for f, value in zip(fields, args):
        if f.name in kwargs:
            raise TypeError(f"{type(self).__name__}() got {f.name!r} twice")
        kwargs[f.name] = value
    names = {f.name for f in fields}
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}")
    for f in fields:
        if f.name in kwargs:
            value = kwargs[f.name]
        elif not _has_default(f):
            raise TypeError(f"{type(self).__name__}() missing required argument: {f.name!r}")
        else:
            value = f.make_default()
        object.__setattr__(self, f.name, value)


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in type(self).__record_fields__)


def _eq(self: Any, other: Any) -> Any:
    if type(other) is not type(self):
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _repr(self: Any) -> str:
    return f"{type(self).__name__}(" + ", ".join(
        f"{f.name}={getattr(self, f.name)!r}" for f in type(self).__record_fields__) + ")"


def _frozen(self: Any, name: str, value: Any = None) -> None:
    raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """A frozen record of the class's annotated fields, in order, with their defaults."""
    found: list[Field] = []
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(value)
        f.name = name
        if found and _has_default(found[-1]) and not _has_default(f):
            raise TypeError(f"{cls.__name__}.{name}: a field without a default after one with a default")
        if isinstance(value, Field):
            delattr(cls, name)
        found.append(f)
    attrs: dict[str, Any] = {"__record_fields__": tuple(found), "__init__": _init, "__eq__": _eq,
                             "__hash__": _hash, "__repr__": _repr, "__setattr__": _frozen, "__delattr__": _frozen}
    for name, value in attrs.items():
        setattr(cls, name, value)
    return cls


def is_record(value: Any) -> bool:
    return hasattr(value, "__record_fields__")


def fields(cls_or_record: Any) -> tuple[Field, ...]:
    return typing.cast("tuple[Field, ...]", cls_or_record.__record_fields__)


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record `obj` with `changes`."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


#: Types with their own encoder or checker (the contract's actions).
Special = dict[type, Callable[..., Any]]


def encode(value: Any, special: Special | None = None) -> Any:
    """Records, lists and dicts as JSON data."""
    special = special or {}
    if type(value) in special:
        return special[type(value)](value)
    if is_record(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), special) for f in fields(value)}
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


def prime(hint: Any, _seen: set[Any] | None = None) -> None:
    """Resolves the type hints of `hint` and of every record it holds now, before the first
    decode: L1's resident runner does it once, and each scenario it forks finds them
    resolved (typing.get_type_hints took 0.03-0.05 s of every scenario under TCG)."""
    seen: set[Any] = set() if _seen is None else _seen
    if isinstance(hint, type) and is_record(hint):
        if hint in seen:
            return
        seen.add(hint)
        for inner in _hints(hint).values():
            prime(inner, seen)
    for arg in typing.get_args(hint):
        prime(arg, seen)


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
    if isinstance(hint, type) and is_record(hint):
        if not isinstance(value, dict):
            raise ContractError(key, value, f"a mapping ({hint.__name__})")
        hints = _hints(hint)
        known = {f.name: f for f in fields(hint)}
        for name in value:
            if name not in known:
                raise ContractError(f"{key}.{name}", value[name], "", tuple(known))
        kwargs: dict[str, Any] = {}
        for name, f in known.items():
            if name in value:
                kwargs[name] = _decode(hints[name], value[name], f"{key}.{name}", special)
            elif not _has_default(f):
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
