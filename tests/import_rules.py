"""The import rules of the trust boundary, checked by parsing every module's imports.

Which side a module runs on is read from its path:

- **site**: ``site/``, ``demo/``, ``node.py`` and an analysis's ``site.py`` / ``site_*.py``;
- **researcher**: the package root (``fh.Federation``, ``fh.Policy``), ``engine/``, ``display/``,
  ``kernel/``, ``server/``, ``federation.py``, ``activity.py``, ``runner.py`` and an analysis's
  ``combine*.py`` / ``result*.py``;
- **entry**: ``__main__.py``, the command line, which dispatches to either side (``fedhem demo``
  writes site folders, ``fedhem run`` executes notebooks); nothing imports it;
- **shared**: ``protocol/``, ``privacy/``, ``errors.py``, the analysis registry, and an analysis
  package's ``__init__.py`` and ``params.py`` (names, constants, parameter checks: no rows).

Rules (each import is checked, also those inside functions):

1. site code imports no researcher code (engine, display, federation, kernel, server, combine, result);
2. researcher code imports no site code, except ``federation.py``, which starts embedded sites
   through ``node`` (the one bridge);
3. ``site/`` imports no analysis (the executor is handed its site steps);
4. ``engine/`` imports neither ``site/`` nor ``analyses/``;
5. shared code imports neither side.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "fedhem_kernel"
RESEARCHER_TOP = {"engine", "display", "kernel", "server", "federation", "activity", "runner"}
SITE_TOP = {"site", "demo", "node"}
SHARED_TOP = {"protocol", "privacy", "errors"}


def side(module: str) -> str:
    """``site``, ``researcher``, ``shared`` or ``other`` for a dotted module name of the package."""
    parts = module.split(".")[1:]
    if not parts:
        return "researcher"  # the package root: the researcher's API
    top = parts[0]
    if top == "__main__":
        return "entry"
    if top in SITE_TOP:
        return "site"
    if top in RESEARCHER_TOP:
        return "researcher"
    if top in SHARED_TOP:
        return "shared"
    if top == "analyses":
        leaf = parts[-1]
        if leaf.startswith("site"):
            return "site"
        if leaf.startswith(("combine", "result")):
            return "researcher"
        return "shared"  # analyses/__init__, registry, <name>/__init__, params
    return "other"


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``root`` (the package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module of the package) for every import in the module, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in known else base))
    return [(line, m) for line, m in found if m == PACKAGE or m.startswith(PACKAGE + ".")]


def violations(root: Path) -> list[str]:
    """Every import that breaks a rule, as ``file:line: importer -> imported (rule)``."""
    mods = modules(root)
    known = set(mods)
    out = []
    for name, path in mods.items():
        mine = side(name)
        for line, target in imports(name, path, known):
            theirs = side(target)
            bridge = name == f"{PACKAGE}.federation" and target == f"{PACKAGE}.node"
            rule = None
            if theirs == "entry":
                rule = "imports the command line"
            elif name.startswith(f"{PACKAGE}.site") and target.startswith(f"{PACKAGE}.analyses"):
                rule = "site/ imports an analysis"
            elif name.startswith(f"{PACKAGE}.engine") and target.startswith(
                (f"{PACKAGE}.site", f"{PACKAGE}.analyses")
            ):
                rule = "engine/ imports site/ or analyses/"
            elif mine == "site" and theirs == "researcher":
                rule = "site code imports researcher code"
            elif mine == "researcher" and theirs == "site" and not bridge:
                rule = "researcher code imports site code"
            elif mine == "shared" and theirs in ("site", "researcher"):
                rule = f"shared code imports {theirs} code"
            if rule:
                rel = path.relative_to(root.parent)
                out.append(f"{rel}:{line}: {name} -> {target} ({rule})")
    return out
