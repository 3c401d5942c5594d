"""PEP 440 versions as the rules need them: pre-releases, `+cu…` local tags and `.post` releases.

>>> parse("2.8.3+cu12torch2.4cxx11abiFALSE") < parse("2.9")
True
>>> parse("4.0.0b36").major, parse("4.0.0b36") >= parse("4.0.0b5")
(4, True)
>>> parse("not a version") is None
True
>>> below("2.9.0rc1", "2.9"), below("2.8.3.post1", "2.9")
(False, True)
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


def below(text: str | None, limit: str) -> bool:
    """True when `text` parses and comes before every release of `limit`, its pre-releases included.

    An exclusive upper bound means "not checked against this release yet", and `2.9.0rc1` is as
    unchecked as `2.9.0`, though PEP 440 sorts it below.
    """
    version, bound = parse(text), Version(limit)
    if not bound.is_prerelease and not bound.is_devrelease:
        bound = Version(f"{bound.base_version}.dev0")
    return version is not None and version < bound
