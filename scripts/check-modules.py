#!/usr/bin/env python3
"""The host's module graph: no two modules import each other, directly or
through others, and each layer uses only itself and the layers below it
(see host/src/lib.rs). Run by `make lint`; prints the graph with -v."""

import os
import re
import sys

SRC = next((a for a in sys.argv[1:] if not a.startswith("-")),
           os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "host", "src"))

# Layer of each module group, lowest first; a module may use any group of
# a lower layer, and of its own layer except the middle one, where the
# build pipeline and the runtime stay apart.
LAYERS = {
    "allocator": 0, "bundle": 0, "bus_error": 0, "cachefs": 0, "digests": 0, "latin1": 0, "config": 0, "env_file": 0, "error": 0, "protocol": 0, "metrics": 0, "scratch": 0, "log_filter": 0, "log_writer": 0, "tree_counts": 0,
    "runtime": 1, "build": 1,
    "http": 2,
    "tenants": 3, "cli": 3, "commands": 3, "dev_reload": 3, "lib": 3,
}


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel == ["main"]:
        return None
    return "::".join(rel) or "lib"


def main():
    files = {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs"):
                m = module_of(os.path.join(root, n))
                if m:
                    files[m] = open(os.path.join(root, n)).read()
    modules = set(files)
    edges = {m: set() for m in modules}
    for m, text in files.items():
        # Test modules may reach anywhere they need.
        text = text.split("#[cfg(test)]")[0]
        uses = set(re.findall(r"crate::([a-z0-9_]+(?:::[a-z0-9_]+)*)", text))
        for block in re.findall(r"use crate::\{([^}]*)\}", text):
            uses.update(p.strip().split("::{")[0] for p in block.split(","))
        for u in uses:
            parts = u.split("::")
            target = next(("::".join(parts[:i]) for i in range(len(parts), 0, -1)
                           if "::".join(parts[:i]) in modules), None)
            # A module's parent reaches it through `mod`, not an import.
            if target and target != m and not m.startswith(target + "::"):
                edges[m].add(target)
    problems = sorted({f"{m}: no layer given in LAYERS" for m in modules
                       if m.split("::")[0] not in LAYERS})
    for m, targets in edges.items():
        if m.split("::")[0] not in LAYERS:
            continue
        for t in targets:
            if t.split("::")[0] not in LAYERS:
                continue
            lm, lt = LAYERS[m.split("::")[0]], LAYERS[t.split("::")[0]]
            if lt > lm or (lt == lm == 1 and m.split("::")[0] != t.split("::")[0]):
                problems.append(f"layering: {m} (layer {lm}) uses {t} (layer {lt})")
    # Tarjan's strongly connected components: any with two or more is a cycle.
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for comp in sccs:
        if len(comp) > 1:
            problems.append("cycle: " + " ↔ ".join(sorted(comp)))
    if "-v" in sys.argv:
        for m in sorted(edges):
            print(f"{m} → {', '.join(sorted(edges[m])) or '-'}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"module graph: {len(modules)} modules, {sum(map(len, edges.values()))} imports, no cycles, layers respected")


if __name__ == "__main__":
    main()
