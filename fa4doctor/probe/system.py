"""Facts about this process's software and environment, read without importing torch.

- torch's version and the CUDA it was built with come from `torch/version.py` read as text.
- `CUDA_VISIBLE_DEVICES` / `CUDA_DEVICE_ORDER` decide which NVML device is `cuda:N`; the join is
  by UUID, never by index (docs/sources.md#nvml-index-and-cuda-ordinal).
- FA4's CuTe DSL disk cache (`FLASH_ATTENTION_CUTE_DSL_CACHE_*`, docs/sources.md#fa4-compile-cache).

>>> from fa4doctor.environment import GpuFacts
>>> gpus = (GpuFacts("A", (9, 0), nvml_index=0, uuid="GPU-aa"), GpuFacts("B", (9, 0), nvml_index=1, uuid="GPU-bb"))
>>> [g.cuda_index for g in map_cuda_ordinals(gpus, {"CUDA_VISIBLE_DEVICES": "1"})]
[None, 0]
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from importlib.machinery import PathFinder
from dataclasses import replace
from pathlib import Path

from fa4doctor.environment import GpuFacts, JitCache, TorchInfo

# FA4's disk-cache switches (flash_attn/cute/cache_utils.py, b36 L33-47).
CACHE_ENABLED, CACHE_DIR = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"

_VERSION = re.compile(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_CUDA = re.compile(r"^cuda\s*(?::[^=]*)?=\s*(?:['\"]([^'\"]+)['\"]|None)", re.M)


def find_torch_dir(path: list[str] | None = None) -> Path | None:
    """torch's package folder on `path` (default `sys.path`, as the package scan searches), unimported."""
    try:
        spec = PathFinder.find_spec("torch", path)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def read_torch_info(torch_dir: str | Path | None = None, path: list[str] | None = None) -> TorchInfo:
    """torch's version and build CUDA from `torch/version.py` (in `torch_dir`, else found on
    `path`) without importing it."""
    torch_dir = torch_dir if torch_dir is not None else find_torch_dir(path)
    if torch_dir is None:
        return TorchInfo()
    try:
        text = (Path(torch_dir) / "version.py").read_text()
    except OSError:
        return TorchInfo()
    version, cuda = _VERSION.search(text), _CUDA.search(text)
    return TorchInfo(version=version.group(1) if version else None, cuda=cuda.group(1) if cuda else None)


def visible_entries(environ: Mapping[str, str]) -> list[str] | None:
    """`CUDA_VISIBLE_DEVICES` as CUDA reads it: None when unset; parsing stops at the first
    invalid entry (a negative index hides everything after it)."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for part in (p.strip() for p in raw.split(",")):
        if not part or part.startswith("-"):
            break
        entries.append(part)
    return entries


def _cuda_order(gpus: tuple[GpuFacts, ...]) -> list[GpuFacts]:
    # PCI_BUS_ID is NVML's order. FASTEST_FIRST (CUDA's default) equals it when every GPU is the
    # same model; with mixed models CUDA's choice is unknown here, so problems.py warns
    # (docs/sources.md#nvml-index-and-cuda-ordinal).
    present = [g for g in gpus if not g.lost]
    return sorted(present, key=lambda g: g.nvml_index if g.nvml_index is not None else 0)


def order_is_ambiguous(gpus: tuple[GpuFacts, ...], environ: Mapping[str, str]) -> bool:
    """Mixed GPU models without `CUDA_DEVICE_ORDER=PCI_BUS_ID`: CUDA ordinals cannot be derived."""
    return (environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID"
            and len({(g.name, g.compute_capability) for g in gpus if not g.lost}) > 1)


def _match(entry: str, ordered: list[GpuFacts]) -> GpuFacts | None:
    if entry.isdigit():
        return ordered[int(entry)] if int(entry) < len(ordered) else None
    if entry.startswith("MIG-"):
        return next((g for g in ordered if any(m.uuid == entry for m in g.mig_devices)), None)
    prefix = entry if entry.startswith("GPU-") else "GPU-" + entry
    hits = [g for g in ordered if g.uuid and g.uuid.startswith(prefix)]
    return hits[0] if len(hits) == 1 else None  # CUDA accepts unique UUID prefixes only


def map_cuda_ordinals(gpus: tuple[GpuFacts, ...], environ: Mapping[str, str]) -> tuple[GpuFacts, ...]:
    """Each GPU with the `cuda:N` ordinal a process launched with `environ` would give it."""
    ordered = _cuda_order(gpus)
    entries = visible_entries(environ)
    if entries is None:
        visible = ordered
    else:
        visible = []
        for entry in entries:
            hit = _match(entry, ordered)
            if hit is None:
                break  # CUDA stops enumerating at the first entry it cannot resolve
            if hit not in visible:
                visible.append(hit)
    ordinal = {id(g): i for i, g in enumerate(visible)}
    return tuple(replace(g, cuda_index=ordinal.get(id(g))) for g in gpus)


def _user(environ: Mapping[str, str]) -> str:
    # getpass.getuser()'s order, without importing getpass (it pulls in termios).
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if environ.get(name):
            return environ[name]
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry: getpass raises here, so FA4 itself would fail (docs/sources.md#fa4-compile-cache)
        return str(os.getuid())


def _default_cache_dir(environ: Mapping[str, str]) -> str:
    user = _user(environ)
    return os.path.join(tempfile.gettempdir(), user, "flash_attention_cute_dsl_cache")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_jit_cache(environ: Mapping[str, str], max_entries: int = 100_000) -> JitCache:
    """FA4's disk cache as `flash_attn/cute/cache_utils.py` (b36, L33-47) would use it."""
    enabled = environ.get(CACHE_ENABLED, "0") == "1"
    directory = Path(environ.get(CACHE_DIR) or _default_cache_dir(environ))
    writable = os.access(_nearest_existing(directory), os.W_OK | os.X_OK)
    size = entries = None
    if directory.is_dir():
        size = entries = 0
        for root, _dirs, files in os.walk(directory):
            for name in files:
                try:
                    size += os.stat(os.path.join(root, name)).st_size
                except OSError:
                    continue
                entries += 1
            if entries >= max_entries:
                break
    return JitCache(enabled=enabled, directory=str(directory), writable=writable, size_bytes=size,
                    entries=entries)
