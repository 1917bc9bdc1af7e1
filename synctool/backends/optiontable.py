"""Backend options, declared once: name, type, default, secret or not, description.

A backend lists its options as a table of :class:`Option` (built with
:func:`table`); :func:`read_options` turns the ``key=value`` strings of a
spec into typed values, with one parser per type, so every backend reads
booleans, sizes and time spans alike. The same table feeds
``synctool help SCHEME``, the masking of secrets, and the check for unknown
keys. The tool's own settings (``--backend-retry-delay``, ``dry-run=...`` in
``--global-options``) are read by the same parsers.

An option whose name ends in ``*`` stands for every key that starts with the
rest (Duplicati's ``s3-ext-*``, the settings of its S3 library): such keys are
known, so they raise no warning, and are not read.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

#: Values a boolean option takes (Duplicati's parser: an empty value is true).
TRUE = frozenset({"", "1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_SPAN_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_UNIT_WORDS = {"ms": "milliseconds", "s": "seconds"}


class OptionError(ValueError):
    """A value an option cannot take; the message names the option and the value."""


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    kind: str  # "text", "bool", "int", "size" (bytes), "duration" (seconds), "choice"
    default: Any
    help: str
    secret: bool = False
    choices: tuple[str, ...] = ()  # "choice": the values it takes (case-blind)
    #: "duration": the unit of a plain number ("s", or "ms" as Duplicati's retry delay)
    unit: str = "s"
    minimum: float | None = None  # "int", "size", "duration"

    def parse(self, value: str) -> Any:
        """The typed value of ``value``; :class:`OptionError` when it is not one."""
        reader = _READERS[self.kind]
        try:
            parsed = reader(self, value)
        except (ValueError, KeyError):
            raise OptionError(f"option {self.name} takes {self.describe_kind()}, not {value!r}") from None
        if self.minimum is not None and parsed < self.minimum:
            raise OptionError(f"option {self.name} must be at least {_shown(self, self.minimum)}, not {value!r}")
        return parsed

    @property
    def family(self) -> bool:
        """Whether this option stands for every key that starts with its name less the ``*``."""
        return self.name.endswith("*")

    def describe_kind(self) -> str:
        return {
            "text": "text",
            "bool": "true or false",
            "int": "a whole number",
            "size": "a size such as 8MiB",
            "duration": f"a time span such as 30s, 500ms or 1h30m (a plain number is in {_UNIT_WORDS[self.unit]})",
            "choice": " or ".join(self.choices),
        }[self.kind]


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(value)


def parse_size(value: str) -> int:
    """``5MiB``, ``8MB``, ``16m``, ``1048576``: K, M, G, T are powers of 1024, as in Duplicati."""
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(value)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: str, unit: str = "s") -> float:
    """Seconds in ``30``, ``30s``, ``500ms``, ``5m``, ``1h30m`` or Duplicati's ``hh:mm:ss``.

    A plain number is in ``unit``.
    """
    text = value.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(value)
        hours, minutes, seconds = (float(p) for p in parts)
        return hours * 3600 + minutes * 60 + seconds
    parts = _SPAN_PART.findall(text)
    if not text or not parts or _SPAN_PART.sub("", text).strip():
        raise ValueError(value)
    if len(parts) == 1 and not parts[0][1]:
        return float(parts[0][0]) * _SPAN_UNITS[unit]
    if any(not u for _, u in parts):
        raise ValueError(value)  # "1h30": the unit of 30 is anybody's guess
    return sum(float(n) * _SPAN_UNITS[u.lower()] for n, u in parts)


def _choice(option: Option, value: str) -> str:
    for choice in option.choices:
        if choice.lower() == value.strip().lower():
            return choice
    raise ValueError(value)


_READERS = {
    "text": lambda option, value: value,
    "bool": lambda option, value: parse_bool(value),
    "int": lambda option, value: int(value.strip()),
    "size": lambda option, value: parse_size(value),
    "duration": lambda option, value: parse_duration(value, option.unit),
    "choice": _choice,
}


#: How the description of an option that Duplicati declares, and that means
#: nothing here, starts; the reason follows.
NO_EFFECT = "No effect here (accepted for Duplicati's scripts):"

#: Duplicati's time limits, which its S3 and SSH backends (and others) take.
TIMEOUT_OPTIONS = tuple(
    Option(name, "text", None, f"{NO_EFFECT} synctool's own time limits apply, and a stalled request "
           "fails and is retried (--retry).")  # fmt: skip
    for name in ("short-timeout", "list-timeout", "read-write-timeout")
)


def table(*options: Option) -> dict[str, Option]:
    """A backend's options by name (names are compared in lower case)."""
    for option in options:
        if not isinstance(option, Option) or option.name != option.name.lower():
            raise TypeError(f"an option table holds Option objects with lower-case names, not {option!r}")
    return {option.name: option for option in options}


def declares(declared: Mapping[str, Option], key: str) -> bool:
    """Whether ``key`` (case-blind) is one of ``declared`` or of a family among them."""
    key = key.lower()
    return key in declared or any(o.family and key.startswith(o.name[:-1]) for o in declared.values())


def read_options(declared: Mapping[str, Option], given: Mapping[str, str]) -> dict[str, Any]:
    """Every declared option's value: parsed from ``given`` (keys case-blind),
    else its default. An empty value is the default too, except for a
    boolean (where it means true, as ``--flag`` does) and for text. Keys not
    declared are skipped (the caller warns), and so are families.
    Raises :class:`OptionError` for a value that does not parse.
    """
    lowered = {key.lower(): value for key, value in given.items()}
    values = {}
    for name, option in declared.items():
        if option.family:
            continue
        raw = lowered.get(name)
        if raw is None or (not raw.strip() and option.kind not in ("bool", "text")):
            values[name] = option.default
        else:
            values[name] = option.parse(raw)
    return values


def secrets_of(declared: Mapping[str, Option]) -> frozenset[str]:
    return frozenset(name for name, option in declared.items() if option.secret)


def describe(declared: Iterable[Option], width: int = 100) -> list[str]:
    """Each option's usage, then its description wrapped below it, for ``synctool help SCHEME``."""
    lines = []
    for option in declared:
        default = "" if option.default in (None, "") else f" [default: {_shown(option)}]"
        secret = " (secret: masked in every output)" if option.secret else ""
        lines.append(f"  {option.name}={_placeholder(option)}{secret}")
        lines += textwrap.wrap(option.help + default, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


def _placeholder(option: Option) -> str:
    return {"bool": "true|false", "int": "N", "size": "SIZE", "duration": "TIME",
            "choice": "|".join(option.choices)}.get(option.kind, "VALUE")  # fmt: skip


def _shown(option: Option, value: Any = None) -> str:
    """``value`` (by default the option's default) as a user would write it."""
    value = option.default if value is None else value
    if option.kind == "bool":
        return "true" if value else "false"
    if option.kind == "size" and value and value % (1 << 20) == 0:
        return f"{int(value) >> 20}MiB"
    if option.kind == "duration":
        return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
    return str(value)
