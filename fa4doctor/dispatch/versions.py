"""PEP 440 versions as the rules need them: pre-releases, `+cu…` local tags and `.post` releases.

>>> parse("2.8.3+cu12torch2.4cxx11abiFALSE") < parse("2.9")
True
>>> parse("4.0.0b36").major, parse("4.0.0b36") >= parse("4.0.0b5")
(4, True)
>>> parse("not a version") is None
True
"""

from __future__ import annotations

import functools

from packaging.version import InvalidVersion, Version


@functools.lru_cache(maxsize=256)
def parse(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def at_least(text: str | None, minimum: str) -> bool:
    """True when `text` parses and is >= `minimum` (pre-releases compare as PEP 440 says)."""
    version = parse(text)
    return version is not None and version >= Version(minimum)
