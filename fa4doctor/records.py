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
import secrets
import stat
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


# Input files (--env, --spec, --ledger, the vetting ledger) are read whole: a file larger than
# this is refused before it is read. A `check --json` report is ~100 kB and a ledger entry ~400 B,
# so 16 MiB holds 40,000 entries; `--env /dev/zero` grew to 6.1 GB in 6 s without a cap (issue 13).
MAX_INPUT_BYTES = 16 * 2**20


class InputFileError(ValueError):
    """An input file that is not a regular file, is larger than `MAX_INPUT_BYTES`, or is not UTF-8."""


def read_text_file(path: str | os.PathLike, limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of the regular file at `path`; raises `OSError` when it cannot be opened or
    read, `InputFileError` (naming the file) when it is not a regular file, holds more than `limit`
    bytes, or is not UTF-8. Opened with O_NONBLOCK and checked with fstat before any read, so a
    FIFO or a device never blocks and never streams without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputFileError(f"{path} is not a regular file")
        if info.st_size > limit:
            raise InputFileError(f"{path} is larger than {limit} bytes ({info.st_size})")
        chunks, size = [], 0
        while size <= limit:  # a file that grows while we read stops at the cap too
            chunk = os.read(fd, min(limit + 1 - size, 2**20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise InputFileError(f"{path} is larger than {limit} bytes")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def write_json_file(path: Path, body: Any, *, indent: int | None = None, durable: bool = False) -> None:
    """Write `body` as JSON to `path` atomically (`write_text_file`)."""
    write_text_file(path, json.dumps(body, indent=indent), durable=durable)


def write_text_file(path: Path, text: str, *, durable: bool = False) -> None:
    """Write `text` as UTF-8 to `path` atomically: a temporary file beside it, then a rename, so a
    reader never sees half a file and a failure never clobbers the old one (`durable`: on disk before
    the rename). A failure leaves no temporary file behind. The new file keeps the mode and group of
    the one it replaces (a new one gets 0666 less the umask, as `open()` gives): `tempfile.mkstemp`
    alone left every rewrite 0600, unreadable to the other users sharing it (issue 13)."""
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            _keep_access(handle.fileno(), path)
            handle.write(text)
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


def _create_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in `path`'s directory, created 0666 less the umask."""
    while True:
        tmp = os.path.join(path.parent, f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _keep_access(fd: int, path: Path) -> None:
    """Give the temporary file the mode and group of the file it will replace, if there is one.
    A group this process is not in cannot be given (EPERM): the directory's stays."""
    try:
        old = os.stat(path)
    except OSError:
        return
    try:
        os.fchown(fd, -1, old.st_gid)
    except PermissionError:
        pass
    os.fchmod(fd, stat.S_IMODE(old.st_mode))


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
