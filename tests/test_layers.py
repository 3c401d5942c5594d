"""The package's layers: imports run one way, down, and nothing in the tree names a file it lacks.

    cli -> serve -> exporters -> smoke -> runtime -> dispatch | probe -> environment -> names, records

`dispatch` (the rules) and `probe` (the facts) stand side by side and never import each other:
the rules decide from an `Environment`, whoever gathered it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fa4doctor"

# Higher may import lower; equal ranks are separate rooms that must not import each other.
RANK = {"names": 0, "records": 0, "exit_codes": 0, "_lazy": 0, "environment": 1, "dispatch": 2, "probe": 2,
        "runtime": 3, "smoke": 4, "exporters": 5, "serve": 6, "cli": 7, "__main__": 8,
        "models": 3,  # config.json -> AttentionSpecs, pure: reads dispatch.spec only, never runs a kernel
        "integrations": 4,  # transformers' attention registry -> attention(): calls the runtime
        "cluster": 3.5}  # a job's verdict over torch.distributed: gathers probe facts, seeds the runtime's choice
# The one name a lower layer hands on from a higher one: `from fa4doctor.dispatch import attention`, the
# dispatcher's public entry since the first release, loads `fa4doctor.runtime` lazily (a string, on use).
LAZY_UPWARD = {("dispatch", "fa4doctor.runtime.dispatcher"),
               ("dispatch", "fa4doctor.cluster.training")}  # `agree`: the job-wide verdict beside attention()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.startswith("fa4doctor.")]


def _lazy_targets(path: Path) -> list[str]:
    return re.findall(r'"(fa4doctor\.[\w.]+)"', path.read_text()) if path.name == "__init__.py" else []


def _module_room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_rank():
    rooms = {_module_room(p) for p in _sources()} - {"__init__"}
    assert rooms <= set(RANK), f"rank the new room(s) in tests/test_layers.py: {sorted(rooms - set(RANK))}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers(path):
    mine = _module_room(path)
    if mine == "__init__":
        return
    wrong = []
    for line, name in _imports(path):
        theirs = _room(name)
        if theirs in RANK and theirs != mine and RANK[theirs] >= RANK[mine]:
            wrong.append(f"line {line}: {mine} (rank {RANK[mine]}) imports {name} (rank {RANK[theirs]})")
    for name in _lazy_targets(path):
        theirs = _room(name)
        if theirs != mine and RANK.get(theirs, -1) >= RANK[mine] and (mine, name) not in LAZY_UPWARD:
            wrong.append(f"lazy export of {name} from {mine}")
    assert not wrong, "\n".join(wrong)


def test_the_rank_check_catches_an_upward_import(tmp_path):
    """The check itself can fail: probe importing dispatch is the arrow this layout removed."""
    fake = tmp_path / "gather.py"
    fake.write_text("from fa4doctor.dispatch.selection import decide\n")
    assert [(1, "fa4doctor.dispatch.selection"), (1, "fa4doctor.dispatch.selection.decide")] == _imports(fake)
    assert RANK[_room("fa4doctor.dispatch.selection")] >= RANK["probe"]


# The notes this project was researched from are not in the repository: their facts and upstream
# sources live in docs/sources.md, and nothing may send a reader to them.
NOTES = re.compile(r"\b(backend-rules|h100-fa4-measurements|ecosystem-anchors|aesthetics-anchors|DESIGN)\.md\b|§"
                   r"|\bresearch/")
# A path into this repository's own folders must name something that is there.
OWN_PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|fa4doctor|scripts|bench|deploy|examples)/[\w./-]*[\w-])")

UPSTREAM = ("tests/cute/",)  # flash-attention's own test folder, cited by name


def _tracked_text_files(validation: bool = False) -> list[Path]:
    """The repository's text files; `validation` adds docs/validation/ (kept output, whose paths are
    the machines' own, but whose readings must still cite what a cloner can open)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    keep = (".py", ".md", ".cpp", ".sh", ".yaml", ".yml", ".toml", ".json", ".txt")
    return [ROOT / f for f in listed if f.endswith(keep) and (validation or not f.startswith("docs/validation/"))
            and (ROOT / f).is_file() and f != "tests/test_layers.py"]


def test_nothing_cites_the_research_notes():
    cited = [f"{p.relative_to(ROOT)}:{n}: {m.group(0)}" for p in _tracked_text_files(validation=True)
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for m in NOTES.finditer(line)]
    assert not cited, "cite docs/sources.md or the upstream source instead:\n" + "\n".join(cited)


def test_paths_into_the_repository_exist():
    missing = []
    for path in _tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for named in OWN_PATH.findall(line):
                named = named.split("::")[0].rstrip(".")
                if "*" in named or "<" in named or "{" in named or named.startswith(UPSTREAM):
                    continue
                if not (ROOT / named).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {named}")
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


def test_every_fa4_interface_citation_names_its_version():
    """FA4's interface.py moves thousands of lines between betas: `iface:LINE` alone points nowhere."""
    bare = [f"{p.relative_to(ROOT)}:{n}" for p in _tracked_text_files()
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if re.search(r"\biface:\d", line)]
    assert not bare, "write iface@b36:LINE (the beta the line was read from):\n" + "\n".join(bare)
