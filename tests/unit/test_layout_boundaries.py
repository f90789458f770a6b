"""The layout's rules, read from the code with ``ast``: the node side imports only the node side, so does the
provisioner service's side, names are unique across the package, third-party imports are guarded in one file,
and the node side is a plain package."""

from __future__ import annotations

import ast
import pathlib

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
MODULE_UTILS = PLUGINS / "module_utils"
PACKAGE = "ansible_collections.zeroinit.bootstrap.plugins"
# What the provision_agent role copies to a node (see its vars/main.yml).
NODE_SIDE = ("common", "choria", "node", "pki/x509.py")
# What the provisioner role copies to the service's host (see its vars/main.yml); ansible-core's module_utils
# (the signer's argument spec) is installed there as a library.
SERVICE_SIDE = ("common", "choria", "pki", "provisioning")
ANSIBLE_LIBRARY = {SERVICE_SIDE: "ansible.module_utils."}
THIRD_PARTY = ("nats", "cryptography", "zeroconf", "prometheus_client", "jwt", "yaml")
DEPS = "module_utils/common/deps.py"


def python_files(base: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in base.rglob("*.py") if "__pycache__" not in path.parts)


def rel(path: pathlib.Path) -> str:
    return path.relative_to(PLUGINS).as_posix()


def is_inside(path: str, side: tuple) -> bool:
    inside = path[len("module_utils/") :] if path.startswith("module_utils/") else None
    return inside is not None and any(inside == part or inside.startswith(part + "/") for part in side)


def is_node_side(path: str) -> bool:
    return is_inside(path, NODE_SIDE)


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import, relative ones resolved to ``ansible_collections...`` names."""
    package = [PACKAGE, *list(path.relative_to(PLUGINS).parent.parts)]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # "from . import x" and "from .pkg import module" name modules too
            found += [(node.lineno, module)] + [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def package_file(module: str) -> str | None:
    """The plugins/ file (or package) an ``ansible_collections...plugins`` module name points at."""
    if not module.startswith(PACKAGE + "."):
        return None
    parts = module[len(PACKAGE) + 1 :].split(".")
    for cut in range(len(parts), 0, -1):
        candidate = PLUGINS.joinpath(*parts[:cut])
        if candidate.with_suffix(".py").is_file():
            return rel(candidate.with_suffix(".py"))
        if candidate.is_dir():
            return rel(candidate) + "/"
    return None


@pytest.mark.parametrize("side", [NODE_SIDE, SERVICE_SIDE], ids=["node", "service"])
def test_each_copied_side_imports_only_itself_and_no_ansible(side):
    problems = []
    for path in python_files(MODULE_UTILS):
        name = rel(path)
        if not is_inside(name, side):
            continue
        for line, module in imports(path):
            target = package_file(module)
            allowed = ANSIBLE_LIBRARY.get(side)
            if module == "ansible" or (module.startswith("ansible.") and not (allowed and module.startswith(allowed))):
                problems.append(f"{name}:{line} imports {module}")
            elif target is not None and not is_inside(target.rstrip("/"), side) and target != "module_utils/":
                problems.append(f"{name}:{line} imports {module} ({target}), which is not copied with it")
    assert problems == []


def test_the_roles_copy_the_sides_checked_here():
    agent = yaml.safe_load((ROOT / "roles/provision_agent/vars/main.yml").read_text())
    service = yaml.safe_load((ROOT / "roles/provisioner/vars/main.yml").read_text())
    assert [p for p in agent["provision_agent_source_paths"] if p != "pki/__init__.py"] == list(NODE_SIDE)
    assert tuple(service["provisioner_source_paths"]) == SERVICE_SIDE


def test_module_utils_import_each_other_relatively():
    """A plain copy of the node side is a package only if nothing in module_utils names the collection."""
    problems = []
    for path in python_files(MODULE_UTILS):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            problems += [f"{rel(path)}:{node.lineno} imports {name}" for name in names if name.startswith(PACKAGE)]
    assert problems == []


def test_third_party_libraries_are_imported_only_by_the_guard_module():
    problems = []
    for path in python_files(PLUGINS):
        if rel(path) == DEPS:
            continue
        for line, module in imports(path):
            if module.split(".")[0] in THIRD_PARTY:
                problems.append(f"{rel(path)}:{line} imports {module} (import it from common/deps.py)")
    assert problems == []


def test_every_node_side_folder_is_a_package():
    folders = {MODULE_UTILS / "pki"} | {
        path.parent for path in python_files(MODULE_UTILS) if is_node_side(rel(path)) and path.name != "x509.py"
    }
    assert sorted(rel(f) for f in folders if not (f / "__init__.py").is_file()) == []


def public_definitions(path: pathlib.Path) -> list[tuple[str, int]]:
    """Module-level classes, functions and UPPER_CASE constants whose names do not start with ``_``."""
    found = []
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                # constants (UPPER_CASE); a module's own logger and the like are not part of its interface
                names += [e.id for e in elements if isinstance(e, ast.Name) and e.id.upper() == e.id]
        found += [(name, node.lineno) for name in names if not name.startswith("_") and name != "__all__"]
    return found


@pytest.mark.parametrize("base", ["module_utils", "plugin_utils"])
def test_public_names_are_unique_across_the_package(base):
    seen: dict[str, list[str]] = {}
    for path in python_files(PLUGINS / "module_utils") + python_files(PLUGINS / "plugin_utils"):
        for name, line in public_definitions(path):
            seen.setdefault(name, []).append(f"{rel(path)}:{line}")
    clashes = {name: places for name, places in seen.items() if len(places) > 1}
    ours = {name: places for name, places in clashes.items() if any(p.startswith(base + "/") for p in places)}
    assert ours == {}
