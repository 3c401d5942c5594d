"""Installed distributions that matter to attention, read from their metadata (never `__version__`).

- which distribution provides each backend (FA4's `flash_attn.cute.__version__` says "0.0.0",
  docs/sources.md#fa4-version, so versions come from `importlib.metadata` only);
- FA4's own `Requires-Dist` checked against what is installed (docs/sources.md#fa4-dependencies);
- who owns each file under `flash_attn/cute` according to the RECORD files: FA2 <= 2.8.3.post1
  wheels ship a stale copy, and co-installs overwrite each other's files
  (docs/sources.md#fa4-file-ownership);
- the deprecated `pynvml` distribution (docs/sources.md#the-pynvml-distribution-is-deprecated).

Every function takes `path` (the `sys.path` to search), so tests build dist-info trees in a tmp dir.

>>> facts = scan_packages(path=[])
>>> facts.backends[0].backend.value, facts.backends[0].import_status.value
('fa4', 'not_installed')
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import sys
from dataclasses import astuple, dataclass
from email.parser import HeaderParser
from pathlib import Path

from fa4doctor.names import DISTRIBUTIONS, OBSOLETE_DISTRIBUTIONS, BackendName
from fa4doctor.environment import BackendInstall, ImportStatus, Package
from fa4doctor.probe import cache
from fa4doctor.records import digest


def canonicalize_name(name: str) -> str:
    """PEP 503 normalisation (`flash_attn_4` -> `flash-attn-4`), without importing `packaging.tags`."""
    return re.sub(r"[-_.]+", "-", name).lower()


# Distributions that can provide each backend, best first: the backends' own lists (in PEP 503 form).
PROVIDERS: dict[BackendName, tuple[str, ...]] = {
    name: tuple(dict.fromkeys(canonicalize_name(d) for d in (*found, *OBSOLETE_DISTRIBUTIONS.get(name, ()))))
    for name, found in DISTRIBUTIONS.items()}
OBSOLETE_FA4_NAMES = OBSOLETE_DISTRIBUTIONS[BackendName.FA4]
FA4_DEPENDENCIES = ("nvidia-cutlass-dsl", "quack-kernels", "apache-tvm-ffi", "torch-c-dlpack-ext")
REPORTED = frozenset({*(n for names in PROVIDERS.values() for n in names), *FA4_DEPENDENCIES,
                      "nvidia-cutlass-dsl-libs-base", "nvidia-cutlass-dsl-libs-core", "einops", "triton",
                      "nvidia-ml-py", "pynvml", "transformer-engine", "transformer-engine-torch",
                      "xformers", "fa4doctor"})
CUTE_DIR = "flash_attn/cute/"


@dataclass(frozen=True, slots=True)
class RequirementCheck:
    """One of FA4's declared requirements and what is installed for it."""

    requirement: str
    distribution: str
    installed: str | None
    satisfied: bool


@dataclass(frozen=True, slots=True)
class CuteFile:
    """A file under `flash_attn/cute` on the search path, with every distribution whose RECORD lists it."""

    path: str
    owners: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PackageFacts:
    packages: tuple[Package, ...]
    backends: tuple[BackendInstall, ...]
    fa4_requirements: tuple[RequirementCheck, ...] = ()
    cute_files: tuple[CuteFile, ...] = ()
    duplicates: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name -> versions found, first one wins
    software_key: tuple[tuple[str, str], ...] = ()  # (dist-info dir, mtime): what the import cache keys on


def _name(dist: metadata.Distribution) -> str:
    # Python 3.10+ reads the name from the dist-info directory without opening METADATA, already
    # normalised with "_" for every run of "-_.", so a replace finishes the PEP 503 form.
    fast = getattr(dist, "_normalized_name", None)
    return fast.replace("_", "-") if fast else canonicalize_name(dist.metadata["Name"] or "")


def _location(dist: metadata.Distribution) -> str:
    return str(dist.locate_file(""))


@dataclass(frozen=True, slots=True)
class Installed:
    """One distribution's METADATA headers, read once. The body after the first blank line (the
    long description, 29 KB of torch 2.13's 38) is never parsed: `Distribution.version` would parse all
    of it again on every access."""

    name: str
    display_name: str
    version: str | None
    location: str
    requires: tuple[str, ...]

    @classmethod
    def read(cls, name: str, dist: metadata.Distribution) -> Installed:
        # the order of `Distribution.metadata`; "" is an egg-info that is a file, not a directory
        text = dist.read_text("METADATA")
        egg = text is None
        if egg:
            text = dist.read_text("PKG-INFO") or dist.read_text("") or ""
        headers = HeaderParser().parsestr(text.partition("\n\n")[0])
        requires = headers.get_all("Requires-Dist") or ()
        if egg and not requires:
            requires = dist.requires or ()  # an egg-info keeps them in requires.txt
        return cls(name=name, display_name=headers["Name"] or name, version=headers["Version"],
                   location=_location(dist), requires=tuple(requires))


def find_distributions(path: list[str] | None = None) -> tuple[dict[str, metadata.Distribution],
                                                                dict[str, list[metadata.Distribution]]]:
    """The distribution of each name that Python would use (first on `path`), and all of them."""
    every: dict[str, list[metadata.Distribution]] = {}
    for dist in metadata.distributions(path=sys.path if path is None else path):
        every.setdefault(_name(dist), []).append(dist)
    return {name: found[0] for name, found in every.items()}, every


def scan_packages(path: list[str] | None = None, cache_dir: Path | None = None) -> PackageFacts:
    """All package facts of the Python environment that `path` describes (default `sys.path`).

    One pass over the distributions; METADATA is read only for the names in `REPORTED`, once each.
    `cache_dir` keeps FA4's requirement checks between runs (`fa4_requirements`).
    """
    first, every = find_distributions(path)
    found = _reported(every)
    relevant = {name: dists[0] for name, dists in found.items()}
    packages = tuple(Package(name=name, version=d.version, location=d.location) for name, d in sorted(relevant.items()))
    requirements = fa4_requirements(relevant, cache_dir)
    backends = tuple(_backend(backend, relevant, requirements) for backend in PROVIDERS)
    duplicates = tuple((name, tuple(d.version for d in dists)) for name, dists in sorted(found.items())
                       if len({d.version for d in dists}) > 1)
    return PackageFacts(packages=packages, backends=backends, fa4_requirements=requirements,
                        cute_files=cute_ownership(first, path), duplicates=duplicates,
                        software_key=_software_key(every))


def backend_installs(path: list[str] | None = None) -> tuple[BackendInstall, ...]:
    """Which distribution provides each backend, and the dependencies the vetting fingerprint
    hashes: what `scan_packages` says of the backends, without the rest (the runtime's view)."""
    relevant = {name: dists[0] for name, dists in _reported(find_distributions(path)[1]).items()}
    requirements = fa4_requirements(relevant)
    return tuple(_backend(backend, relevant, requirements) for backend in PROVIDERS)


def _reported(every: dict[str, list[metadata.Distribution]]) -> dict[str, tuple[Installed, ...]]:
    return {name: tuple(Installed.read(name, d) for d in dists) for name, dists in every.items() if name in REPORTED}


def _backend(backend: BackendName, dists: dict[str, Installed],
             requirements: tuple[RequirementCheck, ...]) -> BackendInstall:
    name = next((n for n in PROVIDERS[backend] if n in dists), None)
    if name is None:
        return BackendInstall(backend=backend, import_status=ImportStatus.NOT_INSTALLED)
    if backend is BackendName.FA4:
        needs = tuple((r.distribution, r.installed) for r in requirements if r.installed)
    elif backend is BackendName.SDPA or "torch" not in dists:
        needs = ()
    else:
        needs = (("torch", dists["torch"].version),)
    return BackendInstall(backend=backend, distribution=dists[name].display_name, version=dists[name].version,
                          dependencies=needs)


def fa4_requirements(dists: dict[str, Installed], cache_dir: Path | None = None) -> tuple[RequirementCheck, ...]:
    """FA4's `Requires-Dist` (no extras) for its key dependencies, against what is installed.

    With `cache_dir`, the answer is kept under a key of everything it depends on (the lines, the
    installed versions, the interpreter and platform that markers read): parsing needs
    `packaging.requirements`, whose import alone took 38 ms on the development VM
    (docs/validation/cpu-vm/check-outputs.txt), and the answer rarely changes.
    """
    provider = next((dists[n] for n in PROVIDERS[BackendName.FA4] if n in dists), None)
    if provider is None:
        return ()
    installed = {name: dists[name].version for name in FA4_DEPENDENCIES if name in dists}
    from packaging import __version__ as packaging_version  # the package alone: no parser loaded

    uname = os.uname()  # what markers can read, less the host name
    key = digest({"requires": provider.requires, "installed": installed, "packaging": packaging_version,
                        "python": [sys.version, sys.implementation.name], "platform": [
                            sys.platform, uname.sysname, uname.release, uname.version, uname.machine]})
    found = None if cache_dir is None else cache.read_json(cache_dir, "requirements", key)
    if isinstance(found, list):
        return tuple(RequirementCheck(*row) for row in found)
    checks = _check_requirements(provider.requires, installed)
    if cache_dir is not None:
        cache.write_json(cache_dir, "requirements", key, [list(astuple(c)) for c in checks])
    return checks


def _check_requirements(lines: tuple[str, ...], installed: dict[str, str | None]) -> tuple[RequirementCheck, ...]:
    from packaging.requirements import InvalidRequirement, Requirement

    checks = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra such as [cu13], or another platform
        name = canonicalize_name(requirement.name)
        if name not in FA4_DEPENDENCIES:
            continue
        version = installed.get(name)
        ok = version is not None and requirement.specifier.contains(version, prereleases=True)
        checks.append(RequirementCheck(str(requirement), name, version, ok))
    return tuple(checks)


def cute_ownership(dists: dict[str, metadata.Distribution], path: list[str] | None = None) -> tuple[CuteFile, ...]:
    """Every file under `flash_attn/cute` (RECORD entries and files on disk) with its owners."""
    owners: dict[str, list[str]] = {}
    for name, dist in dists.items():
        if not _may_own_cute(name):
            continue  # reading every RECORD (torch's alone is large) would cost half a second
        for entry in dist.files or ():
            if str(entry).startswith(CUTE_DIR) and "__pycache__" not in str(entry):
                owners.setdefault(os.path.normpath(dist.locate_file(entry)), []).append(name)
    for root in (sys.path if path is None else path):
        base = Path(root or ".") / CUTE_DIR
        if not base.is_dir():
            continue
        for file in base.rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                owners.setdefault(os.path.normpath(file), [])
    return tuple(CuteFile(path, tuple(found)) for path, found in sorted(owners.items()))


def _may_own_cute(name: str) -> bool:
    return any(word in name for word in ("flash", "fa4", "cute", "attn"))


def _software_key(every: dict[str, list[metadata.Distribution]]) -> tuple[tuple[str, str], ...]:
    key = []
    for found in every.values():
        for dist in found:
            where = getattr(dist, "_path", None)  # the dist-info directory of a PathDistribution
            try:
                stamp = str(os.stat(where).st_mtime_ns) if where else ""
            except OSError:
                stamp = ""
            key.append((str(where or _location(dist)), stamp))
    return tuple(sorted(key))
