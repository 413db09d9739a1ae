"""Which dropped native modules a distribution's own Python code needs.

Run by `rsgi-wasm build` (deps.rs) with the host's python3, after the
native modules of a resolved site-packages were deleted:

    python3 native_imports.py SITE_PACKAGES '{"module": "distribution", ...}'

Prints one JSON object per import of a dropped module that no `try` with an
ImportError handler guards, in the distribution's own package (the one
named after it, tests aside):
{"module", "dist", "file", "line", "top"}; `top` is true where the import
runs when the module named after the distribution is imported, which then
can never work in WASI, and for a distribution that is one compiled module
(no file, line 0).
"""

import ast
import builtins
import json
import os
import re
import sys

CATCHES = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, getattr(ast, "Match", ast.If))


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def files_of(site):
    """Distribution (normalised) -> its .py files, from dist-info RECORDs."""
    owned = {}
    for entry in os.listdir(site):
        if not entry.endswith(".dist-info"):
            continue
        dist = normalize(entry[: -len(".dist-info")].rsplit("-", 1)[0])
        try:
            with open(os.path.join(site, entry, "RECORD"), encoding="utf-8") as f:
                for line in f:
                    path = line.split(",", 1)[0]
                    if path.endswith(".py") and not path.startswith(".."):
                        owned.setdefault(dist, []).append(path)
        except OSError:
            pass
    return owned


def raises_again(handler):
    """Whether an except clause raises (again, or another error): the
    import it guards has no fallback."""
    return any(isinstance(s, ast.Raise) for s in handler.body)


def aliases(tree):
    """Module-level names bound to exception classes or tuples of them
    (zope.interface's `catch = (ImportError,)`), for except clauses that
    name them."""
    bound = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = stmt.value
            kinds = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
            bound[stmt.targets[0].id] = kinds
    return bound


def may_catch_import_error(kinds, bound, seen=()):
    """Whether an except clause of these types may catch ImportError: a
    builtin exception class is known; anything else (a name bound
    elsewhere, an expression) is given the benefit of the doubt, as the
    warning is only worth what it is sure of."""
    for kind in kinds:
        name = kind.id if isinstance(kind, ast.Name) else kind.attr if isinstance(kind, ast.Attribute) else None
        if name in CATCHES:
            return True
        if isinstance(kind, ast.Name) and name in bound and name not in seen:
            if may_catch_import_error(bound[name], bound, seen + (name,)):
                return True
            continue
        known = getattr(builtins, name, None) if name else None
        if not (isinstance(known, type) and issubclass(known, BaseException)):
            return True
    return False


def guarded(node, parents, bound):
    """Whether `node` sits in the body of a try that catches ImportError
    and carries on: a handler that raises again (Pillow's `_imaging`,
    after its warnings) is no fallback."""
    child = node
    for parent in parents:
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                if raises_again(handler):
                    continue
                if handler.type is None:
                    return True
                kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if may_catch_import_error(kinds, bound):
                    return True
        child = parent
    return False


def imported(node, package):
    """Absolute module names an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".") if package else []
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join(p for p in parts + ([base] if base else []) if p)
    # `from pkg import mod` may load the submodule `pkg.mod`.
    return [base] + [f"{base}.{a.name}" if base else a.name for a in node.names]


def main():
    site, dropped = sys.argv[1], json.loads(sys.argv[2])
    owned = files_of(site)
    for module, dist in sorted(dropped.items()):
        as_path = module.replace(".", "/")
        if os.path.exists(os.path.join(site, as_path + ".py")) or os.path.exists(
            os.path.join(site, as_path, "__init__.py")
        ):
            continue  # a pure-Python module of that name takes its place
        if normalize(module) == normalize(dist):
            # The distribution is that compiled module (ujson): `import` of
            # it cannot work, whatever imports it.
            print(json.dumps({"module": module, "dist": dist, "file": "", "line": 0, "top": True}))
            continue
        # The packages it ships under another name count as its own too
        # (Pillow's PIL, beautifulsoup4's bs4): the one the module is in.
        own = {normalize(dist), normalize(module.split(".")[0])}
        files = own_files(site, owned.get(normalize(dist), []), own)
        # Where each of the package's modules is imported, and whether
        # every such import falls back: PyYAML's yaml/cyaml.py needs
        # yaml._yaml outright, but only __init__'s guarded try imports it.
        sites = {}
        for rel, tree, package, _ in files:
            for node, parents, in_function, conditional in walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    safe = guarded(node, parents, aliases(tree)) or (conditional and not in_function)
                    for name in imported(node, package):
                        sites.setdefault(name, []).append(safe)
        for rel, tree, package, name in files:
            parts = rel[:-3].split("/")
            # The distribution's top-level module itself (brotli.py,
            # pydantic_core/__init__.py).
            top = len(parts) == 1 or (len(parts) == 2 and parts[-1] == "__init__")
            reached_only_safely = not top and name in sites and all(sites[name])
            bound = aliases(tree)
            # (a module-level condition such as multidict's `if not
            # USE_EXTENSIONS:`, a flag set by a guarded import elsewhere, is
            # not reported, as such a flag is how packages fall back).
            for node, parents, in_function, conditional in walk(tree):
                if (
                    isinstance(node, (ast.Import, ast.ImportFrom))
                    and module in imported(node, package)
                    and not guarded(node, parents, bound)
                    and (in_function or not (conditional or reached_only_safely))
                ):
                    print(json.dumps({
                        "module": module,
                        "dist": dist,
                        "file": rel,
                        "line": node.lineno,
                        "top": top and not in_function,
                    }))


def own_files(site, rels, own):
    """(path, tree, package, module name) of each file of the
    distribution's own package (cffi/api.py, PIL/Image.py) that parses,
    not its tests (pytest's conftest.py too) or a compatibility shim
    beside it (PyYAML's _yaml), which an app does not reach."""
    files = []
    for rel in sorted(rels):
        parts = rel[:-3].split("/")
        if normalize(parts[0]) not in own or parts[-1] == "conftest" or any(
            p in ("test", "tests") or p.startswith("test_") for p in parts
        ):
            continue
        try:
            with open(os.path.join(site, rel), "rb") as f:
                tree = ast.parse(f.read(), rel)
        except (OSError, SyntaxError, ValueError):
            continue
        is_init = parts[-1] == "__init__"
        package = ".".join(parts[:-1])
        files.append((rel, tree, package, package if is_init else ".".join(parts)))
    return files


def walk(tree):
    """Every node with its parents, whether it is inside a function, and
    whether a module-level branch holds it."""
    stack = [(tree, [], False, False)]
    while stack:
        node, parents, in_function, conditional = stack.pop()
        yield node, parents, in_function, conditional
        inner = in_function or isinstance(node, FUNCTIONS)
        # A try whose every handler raises runs its body for sure.
        certain = isinstance(node, ast.Try) and node.handlers and all(map(raises_again, node.handlers))
        branch = conditional or (not in_function and isinstance(node, BRANCHES) and not certain)
        for child in ast.iter_child_nodes(node):
            stack.append((child, [node] + parents, inner, branch))

main()
