"""Import failures classified from real child processes that fail on purpose."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time

import pytest

from fa4doctor.names import BackendName
from fa4doctor.environment import ImportStatus
from fa4doctor.probe.imports import check_imports, classify, run_imports

FA4, FA3, FA2, SDPA = BackendName.FA4, BackendName.FA3, BackendName.FA2, BackendName.SDPA


@pytest.fixture
def modules(tmp_path):
    """A directory of importable modules, and an environment that puts it on PYTHONPATH."""
    root = tmp_path / "mods"
    root.mkdir()

    def write(name: str, body: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))

    env = {**os.environ, "PYTHONPATH": str(root)}
    return root, write, env


def _one(env, module, timeout=30.0, backend=FA2):
    return run_imports((backend,), modules={backend: (module,)}, timeout=timeout, environ=env)[backend]


def test_ok(modules):
    _, write, env = modules
    write("good_backend.py", "VALUE = 1\n")
    assert _one(env, "good_backend").status is ImportStatus.OK


def test_missing_dependency_names_the_module(modules):
    _, write, env = modules
    write("needs_dep.py", "import cutlass_dsl_that_is_not_installed\n")
    result = _one(env, "needs_dep")
    assert result.status is ImportStatus.MISSING_DEPENDENCY
    assert "'cutlass_dsl_that_is_not_installed'" in result.error


def test_module_itself_missing_is_not_a_missing_dependency(modules):
    _, _, env = modules
    assert _one(env, "no_such_backend_module").status is ImportStatus.ERROR


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build the shared library")
def test_undefined_symbol_from_a_real_shared_library(modules):
    root, _, env = modules
    source = root / "abi_ext.c"
    # An extension that calls a c10 symbol the loaded torch does not export, as an FA2 wheel built
    # for another torch does (flash-attention#723): the loader refuses it at dlopen time.
    source.write_text("void _ZN3c104cuda9SetDeviceEi(int);\n"
                      "void *PyInit_abi_ext(void) { _ZN3c104cuda9SetDeviceEi(0); return 0; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(root / "abi_ext.so"), str(source)], check=True)
    result = _one(env, "abi_ext")
    assert result.status is ImportStatus.ABI_MISMATCH
    assert "undefined symbol: _ZN3c104cuda9SetDeviceEi" in result.error


def test_segfault_is_a_crash(modules):
    _, write, env = modules
    write("crashes.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    result = _one(env, "crashes")
    assert result.status is ImportStatus.CRASH and "SIGSEGV" in result.error


def test_hang_is_a_timeout_and_the_child_is_killed(modules):
    _, write, env = modules
    write("hangs.py", "import time\ntime.sleep(120)\n")
    started = time.monotonic()
    result = _one(env, "hangs", timeout=1.5)
    assert result.status is ImportStatus.TIMEOUT
    assert time.monotonic() - started < 10


def test_driver_too_old(modules):
    _, write, env = modules
    # torch's message when its CUDA is newer than the driver (sglang#11395).
    write("old_driver.py", "raise RuntimeError('The NVIDIA driver on your system is too old "
                           "(found version 12080). Please update your GPU driver.')\n")
    assert _one(env, "old_driver").status is ImportStatus.DRIVER_TOO_OLD


def test_broken_fa2_blocks_fa4(modules):
    _, write, env = modules
    # FA2 2.8.x's flash_attn/__init__.py imports its extension before flash_attn.cute loads.
    write("flash_attn/__init__.py", "from flash_attn.flash_attn_interface import x\n")
    write("flash_attn/flash_attn_interface.py",
          "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n")
    write("flash_attn/cute/__init__.py", "")
    result = run_imports((FA4,), environ=env)[FA4]
    assert result.status is ImportStatus.BLOCKED and "flash-attn (FA2)" in result.error
    assert run_imports((FA2,), environ=env)[FA2].status is ImportStatus.ABI_MISMATCH


def test_one_child_imports_every_backend_torch_first(modules):
    """Every backend's import begins with torch's: one child pays for it once (issue 14)."""
    root, write, env = modules
    for name in ("mod_fa4", "mod_fa3", "mod_fa2", "mod_sdpa"):
        write(f"{name}.py", f"import os\nopen({str(root / 'log')!r}, 'a').write(f'{name} {{os.getpid()}}\\n')\n")
    results = run_imports((FA4, FA3, FA2, SDPA), environ=env,
                          modules={FA4: ("mod_fa4",), FA3: ("mod_fa3",), FA2: ("mod_fa2",), SDPA: ("mod_sdpa",)})
    assert {r.status for r in results.values()} == {ImportStatus.OK}
    log = [line.split() for line in (root / "log").read_text().splitlines()]
    assert [name for name, _pid in log] == ["mod_sdpa", "mod_fa4", "mod_fa3", "mod_fa2"]
    assert len({pid for _name, pid in log}) == 1


@pytest.mark.parametrize("body, status", [("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", ImportStatus.CRASH),
                                          ("import time\ntime.sleep(120)\n", ImportStatus.TIMEOUT)])
def test_a_crash_or_hang_in_one_import_never_hides_the_others(modules, body, status):
    """The import the shared child died or hung in gets what its own child would have said; the
    backends it had not reached are imported one child each."""
    _, write, env = modules
    write("fine_a.py", "")
    write("bad.py", body)
    write("fine_b.py", "")
    started = time.monotonic()
    results = run_imports((FA4, FA3, FA2), modules={FA4: ("fine_a",), FA3: ("bad",), FA2: ("fine_b",)},
                          environ=env, timeout=2.0)
    assert results[FA3].status is status and results[FA4].status is results[FA2].status is ImportStatus.OK
    assert time.monotonic() - started < 10


def test_what_an_import_prints_never_hides_its_result(modules):
    _, write, env = modules
    write("noisy.py", "import sys\nsys.stdout.write('{\"ok\": false} no newline')\n")
    write("quiet.py", "")
    results = run_imports((FA4, FA2), modules={FA4: ("noisy",), FA2: ("quiet",)}, environ=env)
    assert results[FA4].status is results[FA2].status is ImportStatus.OK


def test_cache_hit_does_not_import_again(modules, tmp_path):
    root, write, env = modules
    write("counted.py", f"open({str(root / 'count')!r}, 'a').write('x')\n")
    options = dict(modules={FA2: ("counted",)}, environ=env, cache_dir=tmp_path / "cache")
    first, cached_first = check_imports((FA2,), "key-1", **options)
    second, cached_second = check_imports((FA2,), "key-1", **options)
    assert (cached_first, cached_second) == (False, True)
    assert first == second and (root / "count").read_text() == "x"
    _, cached_third = check_imports((FA2,), "key-2", **options)  # something changed
    assert cached_third is False and (root / "count").read_text() == "xx"
    _, refreshed = check_imports((FA2,), "key-2", refresh=True, **options)
    assert refreshed is False and (root / "count").read_text() == "xxx"


def test_a_corrupt_cache_is_a_miss(modules, tmp_path):
    _, write, env = modules
    write("fine.py", "")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "imports-k.json").write_text("{not json")
    results, cached = check_imports((FA2,), "k", modules={FA2: ("fine",)}, environ=env, cache_dir=tmp_path / "cache")
    assert cached is False and results[FA2].status is ImportStatus.OK


@pytest.mark.slow
def test_real_torch_import_reports_the_cxx11_abi_flag():
    result = run_imports((SDPA,))[SDPA]
    assert result.status is ImportStatus.OK and isinstance(result.torch_cxx11_abi, bool)


def test_classify_without_a_result_uses_stderr():
    status, detail = classify(None, 1, False, "Fatal Python error: init failed\n")
    assert status is ImportStatus.ERROR and detail == "Fatal Python error: init failed"


def test_each_fingerprint_has_its_own_file_and_old_ones_are_pruned(modules, tmp_path):
    _, write, env = modules
    write("fine.py", "")
    cache = tmp_path / "cache"
    for number in range(10):
        check_imports((FA2,), f"key-{number}", modules={FA2: ("fine",)}, environ=env, cache_dir=cache)
    files = sorted(p.name for p in cache.glob("imports-*.json"))
    assert len(files) == 8 and "imports-key-9.json" in files
    assert check_imports((FA2,), "key-9", modules={FA2: ("fine",)}, environ=env, cache_dir=cache)[1] is True
