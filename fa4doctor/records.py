"""JSON for frozen records: every fact fa4doctor keeps is a frozen dataclass, and this is their one codec.

Types are read from the annotations, so a record round-trips exactly: tuples come back as tuples,
enums as enums, nested records as records.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Point:
...     xy: tuple[int, int]
...     label: str | None = None
>>> to_plain(Point((1, 2)))
{'xy': [1, 2], 'label': None}
>>> from_plain(Point, {"xy": [1, 2]})
Point(xy=(1, 2), label=None)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """Data that does not fit the record it should fill; `path` says where (`gpus[0].uuid`)."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path or 'record'}: {message}")


def digest(facts: object, length: int = 24) -> str:
    """A short stable hash of `facts` (anything JSON can write; other values by `str`): the one
    recipe behind cache keys and ledger fingerprints.

    >>> digest({"b": 1, "a": [2]}) == digest({"a": [2], "b": 1})
    True
    """
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def write_json_file(path: Path, body: Any, *, indent: int | None = None, durable: bool = False) -> None:
    """Write `body` as JSON to `path` atomically: a temporary file beside it, then a rename, so a
    reader never sees half a file (`durable`: on disk before the rename). A failure leaves no
    temporary file behind."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle, indent=indent)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def to_plain(value: Any) -> Any:
    """A record (or anything inside one) as JSON-ready lists, dicts and scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_plain(tp: Any, data: Any, path: str = "") -> Any:
    """Rebuild a value of type `tp` from `to_plain` output; unknown record fields are an error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _from_union(typing.get_args(tp), data, path)
    if dataclasses.is_dataclass(tp):
        return _from_record(tp, data, path)
    if origin is tuple:
        return _from_tuple(typing.get_args(tp), data, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise RecordError(path, f"{data!r} is not one of {[m.value for m in tp]}") from None
    if tp is Any:
        return data
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
        raise RecordError(path, f"expected {tp.__name__}, got {type(data).__name__}")
    return data


def _from_union(options: tuple[Any, ...], data: Any, path: str) -> Any:
    if data is None and type(None) in options:
        return None
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return from_plain(option, data, path)
        except RecordError as exc:
            errors.append(str(exc))
    raise RecordError(path, "; ".join(errors) or "unexpected null")


def _from_record(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise RecordError(path, f"expected an object for {cls.__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"{path}.{unknown[0]}".lstrip("."), f"unknown field of {cls.__name__}")
    values = {name: from_plain(hints[name], value, f"{path}.{name}".lstrip("."))
              for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise RecordError(path, str(exc)) from None


def _from_tuple(args: tuple[Any, ...], data: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(data, list):
        raise RecordError(path, "expected a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(from_plain(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
    if len(args) != len(data):
        raise RecordError(path, f"expected {len(args)} items, got {len(data)}")
    return tuple(from_plain(t, item, f"{path}[{i}]") for i, (t, item) in enumerate(zip(args, data)))
