"""The shape of ``relay/`` and ``workers/``, checked from outside (issue 12, docs/architecture.md).

The sources are read with :mod:`ast`; nothing of the package is imported, so a module that
cannot even be imported still gets its layout checked. The import contracts of
``pyproject.toml`` (``lint-imports``, in ``make lint``) check the import direction in full;
the two rules that keep development tools and the worker out of the other processes are
checked here as well, so that this file alone tells whether the layout holds.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "relay"
WORKERS = ROOT / "workers"
CLI = RELAY / "cli.py"
DEVTOOLS = RELAY / "devtools"

MAX_TOP_LEVEL_MODULES = 8  # directly in relay/, besides __init__, __main__ and cli
NOT_COUNTED = frozenset({"__init__", "__main__", "cli"})
MAX_LINES = 500


def _sources(*bases: Path) -> list[Path]:
    return sorted(p for base in bases for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every module name *path* imports: ``import a.b``, ``from a import b`` (as ``a`` and
    ``a.b``, since ``b`` may be a module), relative imports resolved, and
    ``importlib.import_module`` / ``__import__`` of a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # the package relative imports start from: the folder, for a package's
                # __init__ as for any other module in it
                package = path.relative_to(root).parent.parts
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                names.add(str(first.value))
    return names


def _imports_package(path: Path, package: str) -> list[str]:
    return sorted(n for n in _imported(path) if n == package or n.startswith(package + "."))


def test_at_most_eight_modules_directly_in_relay() -> None:
    """New code finds a sub-package: relay/ keeps only the few modules everything shares."""
    top = sorted(p.stem for p in RELAY.glob("*.py") if p.stem not in NOT_COUNTED)
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_over_500_lines() -> None:
    """The relay, its workers, the client SDK and the benches: no module over 500 lines."""
    too_long = {
        _rel(p): n
        for p in _sources(RELAY, WORKERS, ROOT / "clients" / "python", ROOT / "bench")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, too_long


def test_api_package_has_create_app() -> None:
    """The SPEC's layout: ``relay/api/`` is the HTTP API, with its app factory."""
    assert (RELAY / "api" / "__init__.py").is_file()
    defining = [
        _rel(p)
        for p in _sources(RELAY / "api")
        for node in ast.parse(p.read_text(encoding="utf-8")).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "create_app"
    ]
    assert defining, "no module of relay/api/ defines create_app"


def test_devtools_package_exists() -> None:
    """The SPEC's layout: development tools live in ``relay/devtools/``."""
    assert (DEVTOOLS / "__init__.py").is_file()


def test_settings_are_pydantic_settings() -> None:
    """``relay/settings.py`` defines a subclass of ``pydantic_settings.BaseSettings``."""
    tree = ast.parse((RELAY / "settings.py").read_text(encoding="utf-8"))
    local_names = {"pydantic_settings.BaseSettings"}  # how BaseSettings may be spelled here
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pydantic_settings":
            local_names.update(a.asname or a.name for a in node.names if a.name == "BaseSettings")
        elif isinstance(node, ast.Import):
            local_names.update(
                f"{a.asname or a.name}.BaseSettings"
                for a in node.names
                if a.name == "pydantic_settings"
            )
    subclasses = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(base) in local_names for base in node.bases)
    ]
    assert subclasses, "relay/settings.py has no subclass of pydantic_settings.BaseSettings"


def test_devtools_imported_only_by_devtools_and_cli() -> None:
    """Production code never reaches the simulator, the receiver or the demo."""
    offenders = {
        _rel(p): found
        for p in _sources(RELAY, WORKERS)
        if p != CLI and DEVTOOLS not in p.parents
        if (found := _imports_package(p, "relay.devtools"))
    }
    assert not offenders, offenders


def test_workers_imported_by_no_relay_module_but_cli() -> None:
    """Only ``clip-relay worker`` starts the worker; the API and the core never import it."""
    offenders = {
        _rel(p): found
        for p in _sources(RELAY)
        if p != CLI
        if (found := _imports_package(p, "workers"))
    }
    assert not offenders, offenders


def test_the_import_reader_sees_every_spelling(tmp_path: Path) -> None:
    """The checks above would pass vacuously if :func:`_imported` missed a form of import."""
    module = tmp_path / "relay" / "api" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import workers.jobs\n"
        "from relay import devtools\n"
        "from ..devtools.demo import run_demo\n"
        "from . import views\n"
        "import importlib\n"
        "importlib.import_module('relay.devtools.stack')\n",
        encoding="utf-8",
    )
    assert {
        "workers.jobs",
        "relay.devtools",
        "relay.devtools.demo",
        "relay.api.views",
        "relay.devtools.stack",
    } <= _imported(module, root=tmp_path)
