"""Settings from environment variables, declared once per field and read the same way by both
deployables (the gateway and the model server).

Each settings dataclass field is declared with :func:`setting`: its variable, what it does, and
how to read it. :func:`load` builds the dataclass from an environment, and :func:`reference`
lists the fields for ``docs/configuration.md`` (``python -m common.reference``), so the
documentation is generated from the same declarations the code reads and cannot drift.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

Env = Mapping[str, str]
_MISSING = dataclasses.MISSING


def setting(env: str, doc: str, default: Any = _MISSING, *, default_factory: Callable[[], Any] | None = None,
            read: Callable[[Env, str], Any] | None = None, shown: str | None = None, secret: bool = False):
    """A field read from the variable ``env``. ``read(env, name)`` overrides the reading by type
    and returns None for "not set"; ``shown`` is the default as the documentation shows it."""
    metadata = {"env": env, "doc": doc, "read": read, "shown": shown}
    kwargs = {"default_factory": default_factory} if default_factory else {"default": default}
    return dataclasses.field(metadata=metadata, repr=not secret, **kwargs)


def load(cls: type, env: Env, **overrides):
    """An instance of the settings dataclass ``cls`` from ``env``; unset variables keep defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "env" not in meta or field.name in overrides:
            continue
        value = meta["read"](env, meta["env"]) if meta["read"] else read_typed(env, meta["env"], hints[field.name])
        if value is not None:
            values[field.name] = value
    return cls(**values, **overrides)


def read_typed(env: Env, name: str, kind) -> Any:
    """The variable as ``kind`` (str, int, float, bool, an optional of one, or a tuple of str)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if typing.get_origin(kind) is not tuple:  # an optional: the type inside (a tuple's args are its items')
        kind = ([k for k in typing.get_args(kind) if k is not type(None)] or [kind])[0]
    try:
        if kind is bool:
            return truth(name, raw)
        if kind in (int, float):
            return kind(raw)
        if typing.get_origin(kind) is tuple:
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    return raw


def truth(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def lines_of_file(env: Env, name: str) -> tuple[str, ...]:
    """Non-empty, non-comment lines of the file the variable names (secrets files)."""
    path = env.get(name, "").strip()
    if not path:
        return ()
    with open(Path(path), encoding="utf-8") as f:
        return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))


def reference(cls: type) -> list[tuple[str, str, str]]:
    """``(variable, default as shown, what it does)`` for every field of ``cls`` read from the environment."""
    rows = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "env" not in meta:
            continue
        if meta["shown"] is not None:
            shown = meta["shown"]
        elif field.default is _MISSING or field.default in (None, "", ()):
            shown = "none"
        elif isinstance(field.default, bool):
            shown = str(field.default).lower()
        else:
            shown = f"`{field.default}`"
        rows.append((meta["env"], shown, meta["doc"]))
    return rows
