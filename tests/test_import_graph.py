"""Each tool and the driver work with only their extras installed, and import only upload_common of the
project; docs/architecture.md's registry section is the registry's.

Checked statically, from the source: every module of a tool's package (its top-level and function-level
imports), and, followed name by name, the upload_common code it reaches (a module's top-level code and
the functions and classes the tool uses from it). Every third-party import found must be installed by
the tool's extras (pyproject.toml, distributions mapped to import names by importlib.metadata), except
an import guarded by ``except ImportError`` (the code then does without it or says what to install):
what sits in such a ``try:`` is not followed either.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
import tomllib

from merge_tool import nodeps
from upload_common import registry_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "merge-tool": "merge_tool",
    "gguf-tool": "gguf_tool",
    "docs-tool": "docs_tool",
    "hf-push-tool": "hf_push_tool",
    "upload-driver": "upload_driver",
}
PROJECT = {"upload_common", *PACKAGES.values()}
# Imports a tool's extras do not install, on purpose; each says why.
BEYOND_THE_EXTRA = {
    ("merge_tool.unsloth_engine", "unsloth"): "--engine unsloth, optional: the module checks for it first",
    ("gguf_tool.merge_hook", "conversion"): "llama.cpp's converter package: importable only in the converter's "
    "process, which gguf_tool.launch runs in the converter's folder",
}
_GUARDS = {"ImportError", "ModuleNotFoundError"}


@dataclass
class Unit:
    """A module's top-level code (name None) or one of its top-level functions or classes."""

    imports: list[tuple[str, int]] = field(default_factory=list)  # third-party top-level names, line
    binds: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (project module, attr)
    refs: set[str] = field(default_factory=set)  # "name" and "name.attr" it uses


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts[1:]  # tools/<package>/... or driver/<package>/...
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _files() -> dict[str, Path]:
    return {_module_name(p): p for top in ("tools", "driver") for p in (ROOT / top).rglob("*.py")}


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _bind(unit: Unit, target: str, name: str, alias: str | None) -> None:
    if f"{target}.{name}" in _files():  # `from pkg import module`
        unit.binds[alias or name] = (f"{target}.{name}", None)
    else:
        unit.binds[alias or name] = (target, name)


def _record_import(unit: Unit, module: str, path: Path, node: ast.stmt) -> None:
    if isinstance(node, ast.Import):
        for a in node.names:
            top = a.name.split(".")[0]
            if top in PROJECT:
                unit.binds[a.asname or top] = (a.name if a.asname else top, None)
            elif top not in sys.stdlib_module_names:
                unit.imports.append((top, node.lineno))
        return
    target = _absolute(module, path, node)
    top = target.split(".")[0]
    if top in PROJECT:
        for a in node.names:
            _bind(unit, target, a.name, a.asname)
    elif top not in sys.stdlib_module_names and top != "__future__":
        unit.imports.append((top, node.lineno))


def _guarded(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & _GUARDS)


def _walk(unit: Unit, module: str, path: Path, node: ast.AST) -> None:
    """Imports and names used under ``node``, leaving out what a ``try: ... except ImportError`` holds."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        _record_import(unit, module, path, node)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        unit.refs |= {node.value.id, f"{node.value.id}.{node.attr}"}
    elif isinstance(node, ast.Name):
        unit.refs.add(node.id)
    for child in ast.iter_child_nodes(node):
        if isinstance(node, ast.Try) and _guarded(node) and child in node.body:
            continue
        _walk(unit, module, path, child)


@cache
def _units(module: str) -> dict[str | None, Unit]:
    path = _files()[module]
    units: dict[str | None, Unit] = {None: Unit()}
    for stmt in ast.parse(path.read_text(), filename=str(path)).body:
        named = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        unit = units.setdefault(stmt.name, Unit()) if named else units[None]
        _walk(unit, module, path, stmt)
    return units


def _targets(module: str, unit: Unit) -> set[tuple[str, str | None]]:
    """The (module, name) pairs a unit's names lead to in the project (name None: the module's top level)."""
    binds = {**_units(module)[None].binds, **unit.binds}
    found = set()
    for ref in unit.refs:
        head, _, attr = ref.partition(".")
        if head in binds:
            target, name = binds[head]
            found.add((target, name) if name else (target, attr or None))
        elif not attr and ref in _units(module):
            found.add((module, ref))
    return {(m, n) for m, n in found if m in _files()}


def _reached(package: str) -> dict[tuple[str, str | None], Unit]:
    """Every unit of the package's modules, and the project code they reach, followed name by name."""
    todo = [(m, n) for m in _files() if m.split(".")[0] == package for n in _units(m)]
    seen: dict[tuple[str, str | None], Unit] = {}
    while todo:
        module, name = todo.pop()
        units = _units(module)
        if name is not None and name not in units:
            if name in units[None].binds:  # a name the module imported (a re-export)
                todo.append(units[None].binds[name])
            name = None
        if (module, name) in seen:
            continue
        seen[(module, name)] = units[name]
        todo += [(module, None), *_targets(module, units[name])]
    return seen


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1))


def _installed_by(extras: list[str]) -> set[str]:
    """Import names the project's base dependencies and these extras install (what `merge-tool setup`
    adds without dependencies for them included)."""
    dists = _dists(extras)
    installed = {imp for imp, ds in packages_distributions().items() if {_norm(d) for d in ds} & dists}
    return installed | {d.replace("-", "_") for d in dists}  # and those not installed here (tomli on 3.11)


def _dists(extras: list[str]) -> set[str]:
    """The distributions the project's base dependencies and these extras name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = {_norm(k): v for k, v in project["optional-dependencies"].items()}
    dists = {_requirement_name(r) for r in project["dependencies"]}
    todo, seen = [_norm(e) for e in extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(r"\s*upload-driver\[([^\]]*)\]\s*", req)
            todo += [_norm(e) for e in own.group(1).split(",")] if own else []
            dists |= set() if own else {_requirement_name(req)}
    return dists | {_requirement_name(e.requirement) for e in nodeps.entries() if _norm(e.extra) in seen}


@pytest.mark.parametrize("tool", list(PACKAGES))
def test_each_tool_imports_only_what_its_extras_install(tool):
    extras = registry_cli.extras(tool)
    allowed = _installed_by(extras)
    missing = sorted(
        {
            f"{module}:{line} imports {top}"
            for (module, _), unit in _reached(PACKAGES[tool]).items()
            for top, line in unit.imports
            if top not in allowed and (module, top) not in BEYOND_THE_EXTRA
        }
    )
    assert not missing, f"{tool} with [{','.join(extras)}] only: " + "; ".join(missing)


@pytest.mark.parametrize("tool", list(PACKAGES))
def test_tools_and_the_driver_import_only_upload_common(tool):
    own = PACKAGES[tool]
    wrong = sorted(
        f"{module} imports {target}"
        for (module, _), unit in _reached(own).items()
        for target, _ in unit.binds.values()
        if target.split(".")[0] not in ("upload_common", own)
    )
    assert not wrong


def test_upload_common_imports_no_tool():
    wrong = sorted(
        f"{m} imports {t}"
        for m in _files()
        if m.startswith("upload_common")
        for unit in _units(m).values()
        for t, _ in unit.binds.values()
        if t.split(".")[0] != "upload_common"
    )
    assert not wrong


def test_an_import_outside_the_extra_is_found_and_a_guarded_one_is_not():
    reached = _reached("upload_driver")
    # the driver reaches remote_code's scan (trainer folder notes), but transformers only where it is guarded
    assert ("upload_common.remote_code", "scan") in reached
    assert ("upload_common.remote_code", "_needs_code") not in reached
    assert ("upload_common.remote_code", "_needs_code") in _reached("merge_tool")  # through sanitize
    assert "torch" not in [t for t, _ in reached[("upload_driver.run", "choose_gpu")].imports]  # guarded
    assert "unsloth" in [t for u in _reached("merge_tool").values() for t, _ in u.imports]
    assert "transformers" not in _installed_by(["driver"]) and "torch" in _installed_by(["all"])


def test_the_architecture_section_is_the_registrys():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert registry_cli.section() in text, (
        f"docs/architecture.md's registry section is out of date: run `{registry_cli.REGENERATE}`"
    )
    assert registry_cli.replace_section(text) == text


def test_every_extra_the_registry_names_is_in_pyproject_and_all_holds_them():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = {e for t in PACKAGES for e in registry_cli.extras(t)}
    assert named <= set(optional)
    assert _installed_by(sorted(named)) == _installed_by(["all"])
    assert "upload-driver[all]" in optional["test"]


# ---------------------------------------------------------------------------------------------------
# The same at run time: the driver with only [driver] installed (what [all] adds is made unimportable)

BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
sys.meta_path.insert(0, Blocked())
"""


def _needed_by(names: set[str]) -> set[str]:
    """These distributions and everything they require (not their extras'), as installed here."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        todo += [_requirement_name(r) for r in requires if "extra ==" not in r]
    return seen


def _without_all(code: str, *args, **kw) -> subprocess.CompletedProcess:
    """``code`` run where only the driver's extra (and what it requires) can be imported of [all]."""
    keep = _needed_by(_dists(["driver"]))
    keep_imports = {imp for imp, ds in packages_distributions().items() if {_norm(d) for d in ds} & keep}
    blocked = sorted(_installed_by(["all"]) - keep_imports)
    script = f"BLOCKED = {set(blocked)!r}\n{BLOCKER}\n{code}"
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300, env=env, **kw
    )


def test_the_driver_plans_and_checks_with_only_its_extra(sft_output, tmp_path):
    trainer = tmp_path / "run"
    shutil.copytree(sft_output, trainer)
    config = trainer / "tokenizer_config.json"  # a tokenizer only code defines: merge-tool refuses it
    data = {**json.loads(config.read_text()), "tokenizer_class": "OnlyInCode", "auto_map": {"AutoTokenizer": "t.T"}}
    config.write_text(json.dumps(data))
    main = "from upload_driver.cli import main; main()"
    done = _without_all(
        main,
        "run",
        trainer,
        "--work",
        tmp_path / "w",
        "--push",
        f"local:{tmp_path / 'site'}",
        "--gpus",
        "none",
        "--dry-run",
    )
    # without transformers the driver leaves the refusal to merge-tool's first check
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merge-tool --adapter" in done.stdout and "hf-push-tool --docs" in done.stdout
    scan = "import sys; from upload_common.remote_code import scan; print(scan(sys.argv[1])[0].needs_code)"
    assert _without_all(scan, trainer).stdout.strip() == "()"
    assert "No module named 'torch'" in _without_all("import torch").stderr  # the blocker works
    with_transformers = subprocess.run(
        [sys.executable, "-c", scan, str(trainer)], capture_output=True, text=True, timeout=300
    )
    assert with_transformers.stdout.strip() == "(\"tokenizer_class 'OnlyInCode'\",)"


def test_the_demo_says_to_install_all_when_torch_is_missing(tmp_path):
    done = _without_all("from upload_driver.cli import main; main()", "demo", "--work", tmp_path / "demo")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("is not installed: pip install 'upload-driver[all]'"), done.stderr
