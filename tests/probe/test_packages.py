"""Package facts from fake dist-info trees: providers, versions, FA4's requirements, cute ownership."""

from __future__ import annotations

import importlib.metadata
import shutil

from probe_fakes import CUTE_FILES, fa4, fa4_deps, write_dist

from fa4doctor.names import BackendName
from fa4doctor.environment import ImportStatus
from fa4doctor.probe import packages
from fa4doctor.probe.packages import scan_packages
from fa4doctor.probe.problems import cute_findings, package_findings


def _codes(facts):
    return sorted(f.code for f in package_findings(facts))


def _backend(facts, name):
    return next(b for b in facts.backends if b.backend is BackendName(name))


def test_clean_fa4_b36_install_has_no_problems(site):
    fa4(site)
    fa4_deps(site)
    write_dist(site, "torch", "2.13.0")
    facts = scan_packages(path=[str(site)])
    install = _backend(facts, "fa4")
    assert (install.distribution, install.version, install.import_status) == \
        ("flash-attn-4", "4.0.0b36", ImportStatus.NOT_CHECKED)
    assert ("nvidia-cutlass-dsl", "4.8.1") in install.dependencies
    assert all(r.satisfied for r in facts.fa4_requirements)
    # the [cu13] extra's requirement is not one the plain install must satisfy
    assert len(facts.fa4_requirements) == 4
    assert all(f.owners == ("flash-attn-4",) for f in facts.cute_files) and len(facts.cute_files) == 3
    assert _codes(facts) == []


def test_version_comes_from_metadata_not_dunder_version(site):
    # FA4's __init__ reports "0.0.0" (docs/sources.md#fa4-version); the file content must not matter.
    fa4(site, version="4.0.0b3")
    (site / "flash_attn/cute/__init__.py").write_text('__version__ = "0.0.0"\n')
    assert _backend(scan_packages(path=[str(site)]), "fa4").version == "4.0.0b3"


def test_cutlass_dsl_older_than_fa4_requires_is_an_error(site):
    fa4(site)
    fa4_deps(site, cutlass="4.4.1")
    facts = scan_packages(path=[str(site)])
    findings = [f for f in package_findings(facts) if f.code == "fa4_dependency_mismatch"]
    assert len(findings) == 1
    assert "nvidia-cutlass-dsl>=4.6.2" in findings[0].message and "4.4.1" in findings[0].message
    assert findings[0].fix == "pip install 'nvidia-cutlass-dsl>=4.6.2'"


def test_missing_fa4_dependency_is_named(site):
    fa4(site)
    facts = scan_packages(path=[str(site)])
    missing = {f.fix for f in package_findings(facts) if f.code == "fa4_dependency_missing"}
    assert missing == {"pip install 'nvidia-cutlass-dsl>=4.6.2'", "pip install 'quack-kernels>=0.5.3'",
                       "pip install 'apache-tvm-ffi<0.2,>=0.1.11'", "pip install 'torch-c-dlpack-ext'"}


def test_stale_cute_copy_from_flash_attn_283_alone(site):
    write_dist(site, "flash-attn", "2.8.3", {"flash_attn/__init__.py": "", "flash_attn/cute/__init__.py": "",
                                             "flash_attn/cute/interface.py": ""})
    facts = scan_packages(path=[str(site)])
    assert _backend(facts, "fa4").import_status is ImportStatus.NOT_INSTALLED  # FA2's copy is not FA4
    assert _backend(facts, "fa2").version == "2.8.3"
    finding = next(f for f in cute_findings(facts) if f.code == "stale_cute_copy")
    assert finding.severity == "error" and "flash-attn 2.8.3" in finding.message
    assert "pip install --pre --force-reinstall --no-deps 'flash-attn-4'" in finding.fix


def test_fa2_and_fa4_owning_the_same_files(site):
    write_dist(site, "flash-attn", "2.8.3", {"flash_attn/cute/interface.py": "old"})
    (site / "flash_attn/cute/interface.py").unlink()
    fa4(site)  # installed after FA2: overwrites the file, both RECORDs list it
    codes = {f.code: f for f in cute_findings(scan_packages(path=[str(site)]))}
    assert {"stale_cute_copy", "cute_files_shared"} <= set(codes)
    assert "flash-attn and flash-attn-4" in codes["cute_files_shared"].message
    assert "flash-attn-4==4.0.0b36" in codes["cute_files_shared"].fix


def test_files_nobody_owns(site):
    fa4(site)
    (site / "flash_attn/cute/leftover.py").write_text("")
    (site / "flash_attn/cute/__pycache__").mkdir()
    (site / "flash_attn/cute/__pycache__/x.cpython-311.pyc").write_text("")
    facts = scan_packages(path=[str(site)])
    unowned = [f.path for f in facts.cute_files if not f.owners]
    assert len(unowned) == 1 and unowned[0].endswith("leftover.py")
    assert [f.code for f in cute_findings(facts)] == ["cute_files_unowned"]


def test_fa3_beta_and_old_fa4_names(site):
    write_dist(site, "flash_attn_3", "3.0.0b1", {"flash_attn_interface.py": ""})
    write_dist(site, "fa4", "4.0.0b3", {f: "" for f in CUTE_FILES})
    facts = scan_packages(path=[str(site)])
    assert (_backend(facts, "fa3").distribution, _backend(facts, "fa3").version) == ("flash_attn_3", "3.0.0b1")
    assert (_backend(facts, "fa4").distribution, _backend(facts, "fa4").version) == ("fa4", "4.0.0b3")
    assert "obsolete_fa4_distribution" in _codes(facts)


def test_two_fa4_versions_on_the_path_first_wins(tmp_path):
    target, site = tmp_path / "target", tmp_path / "site"
    fa4(target, "4.0.0b36")
    fa4(site, "4.0.0b3")
    facts = scan_packages(path=[str(target), str(site)])
    assert _backend(facts, "fa4").version == "4.0.0b36"
    assert ("flash-attn-4", ("4.0.0b36", "4.0.0b3")) in facts.duplicates
    assert "duplicate_distribution" in _codes(facts)


def test_deprecated_pynvml_distribution_warns(site):
    write_dist(site, "pynvml", "13.0.1")
    write_dist(site, "torch", "2.13.0")
    finding = next(f for f in package_findings(scan_packages(path=[str(site)])) if f.code == "deprecated_pynvml")
    assert finding.severity == "warning" and "nvidia-ml-py" in finding.fix


def test_software_key_changes_when_a_distribution_changes(site):
    fa4(site, "4.0.0b35")
    before = scan_packages(path=[str(site)]).software_key
    write_dist(site, "flash-attn", "2.8.3")
    assert scan_packages(path=[str(site)]).software_key != before


def test_metadata_headers_only_and_read_once(site, monkeypatch):
    # The body after the blank line is the long description: text in it is not a header.
    info = write_dist(site, "torch", "2.13.0")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n\n"
                                   "Version: 9.9.9\nRequires-Dist: not-a-header\n" + "long description\n" * 1000)
    egg = site / "einops-0.8.2.egg-info"  # an egg-info keeps its metadata in PKG-INFO
    egg.mkdir()
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.2\nName: einops\nVersion: 0.8.2\n")
    reads = []
    real = importlib.metadata.PathDistribution.read_text
    monkeypatch.setattr(importlib.metadata.PathDistribution, "read_text",
                        lambda self, name: reads.append((self._path.name, name)) or real(self, name))
    facts = scan_packages(path=[str(site)])
    assert {p.name: p.version for p in facts.packages} == {"torch": "2.13.0", "einops": "0.8.2"}
    assert _backend(facts, "sdpa").version == "2.13.0"
    assert reads.count(("torch-2.13.0.dist-info", "METADATA")) == 1


def test_fa4_requirement_checks_are_kept_by_content(site, tmp_path, monkeypatch):
    fa4(site)
    fa4_deps(site)
    cache = tmp_path / "cache"
    first = scan_packages(path=[str(site)], cache_dir=cache).fa4_requirements
    assert len(first) == 4 and len(list(cache.glob("requirements-*.json"))) == 1

    def parse_again(*args):
        raise AssertionError("the cached answer should have been used")

    monkeypatch.setattr(packages, "_check_requirements", parse_again)
    assert scan_packages(path=[str(site)], cache_dir=cache).fa4_requirements == first
    monkeypatch.undo()
    for info in site.glob("nvidia_cutlass_dsl-*.dist-info"):
        shutil.rmtree(info)
    write_dist(site, "nvidia-cutlass-dsl", "4.4.1")  # another version: another key, a fresh answer
    changed = scan_packages(path=[str(site)], cache_dir=cache).fa4_requirements
    assert ("nvidia-cutlass-dsl", "4.4.1", False) in {(c.distribution, c.installed, c.satisfied) for c in changed}
