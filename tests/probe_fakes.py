"""Helpers for the probe and check tests: fake dist-info trees and the checked-in NVML scenarios."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

NVML_FIXTURES = Path(__file__).parent / "fixtures" / "nvml"


def write_dist(root: Path, name: str, version: str, files: dict[str, str] | None = None,
               requires: tuple[str, ...] = ()) -> Path:
    """A wheel-installed distribution: its files, METADATA and a RECORD listing them with hashes."""
    files = dict(files or {})
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    record = []
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{relative},sha256={digest},{len(text.encode())}")
    record += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return info


FA4_B36_REQUIRES = ("nvidia-cutlass-dsl>=4.6.2", "nvidia-cutlass-dsl[cu13]>=4.6.2; extra == \"cu13\"",
                    "torch", "einops", "typing_extensions", "apache-tvm-ffi<0.2,>=0.1.11",
                    "torch-c-dlpack-ext", "quack-kernels>=0.5.3")
CUTE_FILES = ("flash_attn/cute/__init__.py", "flash_attn/cute/interface.py", "flash_attn/cute/cache_utils.py")


def fa4(root: Path, version: str = "4.0.0b36", requires: tuple[str, ...] = FA4_B36_REQUIRES) -> Path:
    return write_dist(root, "flash-attn-4", version, {f: f"# fa4 {version}\n" for f in CUTE_FILES}, requires)


def fa4_deps(root: Path, cutlass: str = "4.8.1") -> None:
    for name, version in (("nvidia-cutlass-dsl", cutlass), ("quack-kernels", "0.6.5"),
                          ("apache-tvm-ffi", "0.1.15.post2"), ("torch-c-dlpack-ext", "0.1.5")):
        write_dist(root, name, version)
