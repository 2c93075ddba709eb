"""DESIGN's dependency direction, checked by walking every module's imports."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "adapters", "middlewares", "proxy")
ALLOWED = {
    "config": {"config"},
    "adapters": {"adapters", "config"},
    "middlewares": {"middlewares", "config"},
    "proxy": {"proxy", "middlewares", "adapters", "config"},
}
FORBIDDEN_THIRD_PARTY = {"adapters": {"aiohttp", "structlog", "prometheus_client", "redis"},
                         "config": {"aiohttp", "structlog", "prometheus_client", "PIL"}}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(_top(node.module))
    return found


def _top(module: str) -> str:
    """`imagegate.config.schema` -> `config`: the package a module belongs to."""
    parts = module.split(".")
    return parts[1] if parts[0] == "imagegate" and len(parts) > 1 else parts[0]


def modules() -> list[tuple[str, Path]]:
    return [(pkg, p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize(("package", "path"), modules(), ids=lambda v: str(v))
def test_imports_follow_the_dependency_direction(package: str, path: Path) -> None:
    found = imports_of(path)
    internal = found & set(PACKAGES)
    assert internal <= ALLOWED[package], f"{path.name} imports {internal - ALLOWED[package]}"
    banned = found & FORBIDDEN_THIRD_PARTY.get(package, set())
    assert not banned, f"{path.name} imports {banned}"


def test_no_module_imports_a_bare_package_name() -> None:
    """Installed, only `imagegate.*` exists: `import config` would find another distribution."""
    for _, path in modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bare = [n for n in names if n.split(".")[0] in PACKAGES]
            assert not bare, f"{path} imports {bare}"


def test_every_package_is_checked() -> None:
    assert {pkg for pkg, _ in modules()} == set(PACKAGES)
