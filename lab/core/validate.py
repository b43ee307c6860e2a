"""The one toolkit that checks what people write: the lab config, scenario files.

A checker takes the raw YAML value and returns the clean one, or raises `Bad` saying what
is accepted ("an integer from 1 to 16"); the caller adds where (file, key) and the value,
so every mistake is one line. `Invalid` carries a complete explanation instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import yaml

from lab.core.errors import ConfigError, UserError
from lab.core.versions import is_condition
from lab.shared.units import UNITS, MiB, short_size

Check = Callable[[Any], Any]
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.I)
_SCALE = {"": 1, **dict(UNITS)}


class Bad(ValueError):
    """A value is wrong; the message says what is accepted."""


class Invalid(Bad):
    """A value is wrong; the message is the whole explanation (not "expected ...")."""


def choice(options: tuple[str, ...] | list[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise Bad("one of " + ", ".join(options))
        return str(value)
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad("true or false")
    return value


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise Bad(f"an integer from {lo} to {hi}")
        return value
    return check


def seconds(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise Bad(f"a number of seconds from {lo:g} to {hi:g}")
        return float(value)
    return check


def window(lo: float, hi: float) -> Callable[[Any], tuple[float, float]]:
    """Seconds, or [min, max] seconds (a random moment in that window, per run)."""
    def check(value: Any) -> tuple[float, float]:
        pair = value if isinstance(value, list) and len(value) == 2 else [value, value]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi for x in pair) \
                or pair[0] > pair[1]:
            raise Bad(f"a number of seconds from {lo:g} to {hi:g}, or [min, max] such seconds")
        return float(pair[0]), float(pair[1])
    return check


def text(pattern: re.Pattern[str] | None = None, expected: str = "text") -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or (pattern and not pattern.match(value)):
            raise Bad(expected)
        return value
    return check


def text_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad("a list of strings")
    return list(value)


def bounds(value: Any) -> tuple[int, int]:
    """A count, or [min, max] counts."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return (value, value)
    if isinstance(value, list) and len(value) == 2 and v_ints(value) and value[0] <= value[1]:
        return (value[0], value[1])
    raise Bad("a count or [min, max]")


def v_ints(values: list[Any]) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in values)


def parse_bytes(value: Any) -> int:
    """4096, '4K', '2M', '1G', '0x40000000' -> bytes."""
    if isinstance(value, bool):
        raise Bad("a size such as 4K, 2M, 1G or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise Bad("a size of at least 0")
        return value
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lower().startswith("0x"):
            try:
                return int(stripped, 16)
            except ValueError:
                pass
        m = _SIZE.match(stripped)
        if m:
            return int(m.group(1)) * _SCALE[m.group(2).upper()]
    raise Bad("a size such as 4K, 2M, 1G, 0x40000000 or a number of bytes")


def size(lo: int, hi: int, multiple: int = 1) -> Callable[[Any], int]:
    """A size in bytes from `lo` to `hi`, a multiple of `multiple`."""
    def check(value: Any) -> int:
        n = parse_bytes(value)
        if not lo <= n <= hi or n % multiple:
            raise Bad(f"a size from {short_size(lo)} to {short_size(hi)}"
                      + (f", a multiple of {short_size(multiple)}" if multiple > 1 else ""))
        return n
    return check


def size_mib(value: Any) -> int:
    """'2G', '2048M', '2GiB', 2048 (a bare number is MiB) -> MiB."""
    if isinstance(value, bool):
        raise Bad("a size")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise Bad("a size such as 2G, 1536M or 2048 (MiB)")
    n = int(m.group(1)) * (_SCALE[m.group(2).upper()] if m.group(2) else MiB)
    if n % MiB:
        raise Bad("a whole number of MiB")
    return n // MiB


def version_condition(what: str) -> Callable[[Any], str]:
    """'>=5.15', '>=6.1,<6.12': `what` names the examples ("kernel" or "QEMU")."""
    examples = {"kernel": "'>=5.15' or '>=6.1,<6.12'", "QEMU": "'>=9.0' or '<9.0'"}[what]

    def check(value: Any) -> str:
        if not is_condition(value):
            raise Bad(f"{what} version conditions such as {examples}")
        return str(value)
    return check


#: Larger than any config or scenario: a file this big is a mistake, and is not parsed.
MAX_YAML_BYTES = 1 << 20


class Checker:
    """Checks one file's keys and values (a scenario's: lab/scenarios/model.py): the first
    mistake raises one UserError line naming the file, the key, the value and what is
    accepted."""

    def __init__(self, where: str, fix: str = "fix the scenario file"):
        self.where = where
        self.fix = fix

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise UserError(f"{self.where}: {key}: expected {expected}, got {value!r}; {self.fix}")

    def mapping(self, key: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, value, "a mapping")
        for k in value:
            if k not in known:
                raise UserError(f"{self.where}: {f'{key}.' if key else ''}{k}: unknown key; known keys: "
                                f"{', '.join(known)}")
        return dict(value)

    def get(self, data: dict[str, Any], key: str, path: str, check: Check, default: Any = None) -> Any:
        if key not in data or data[key] is None:
            return default
        try:
            return check(data[key])
        except Bad as exc:
            self.fail(path, data[key], str(exc))


class _Refused(Exception):
    """What a YAML file may not hold, said with its line."""


#: libyaml's parser when PyYAML has it (its wheels do): the suites' 61 files parse in 8 ms
#: with it, 48 ms in Python, and every `kvmlab test` reads them all.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _refuse_aliases(content: str) -> None:
    """Refuses a YAML alias at its first event, before anything is built: `*name`
    expands an anchored node in place, so a few lines nesting aliases ("billion laughs")
    become gigabytes. No kvmlab file needs them."""
    if "*" not in content:
        return
    for event in yaml.parse(content, Loader=_LOADER):
        if isinstance(event, yaml.events.AliasEvent):
            mark = event.start_mark  # (both parsers give one)
            raise _Refused(f"line {mark.line + 1 if mark is not None else '?'}: a YAML alias (*{event.anchor}); "
                           "aliases are not accepted, write the value out")


def read_yaml(path: Path, missing: str, fix: str = "fix the file") -> Any:
    """A YAML file's data; a missing, unreadable, too large or malformed file, or one with
    an alias, is one line. Time and memory stay bounded whatever the file holds."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB, not a kvmlab file; {fix}")
    content = raw.decode(errors="replace")
    try:
        _refuse_aliases(content)
        return yaml.load(content, Loader=_LOADER)  # a safe loader: plain data only
    except _Refused as exc:
        raise ConfigError(f"{path}: {exc}; {fix}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}; {fix}") from None
