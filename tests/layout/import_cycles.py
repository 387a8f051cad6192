#!/usr/bin/env python3
"""Fails when files of src/ import each other in a cycle (issue 13: imports point down the
stack). Reads `crate::…` and `super::…` paths outside #[cfg(test)] modules, resolves each
to the deepest file that exists, and reports every strongly connected component of the
file graph with its edges. A module's own mod.rs re-exporting its children is not an
import of them (it is written `mod x; pub use x::…`, which this does not follow)."""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "src")
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{")
PATH = re.compile(r"\b(crate|super)((?:::\w+)+)(?:::\{([^;]*?)\})?")


def modules(root):
    files = {}
    for d, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(d, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            files[tuple(parts)] = path
    return files


def without_tests(src):
    out = []
    while (m := TEST_MOD.search(src)) is not None:
        out.append(src[: m.start()])
        depth, j = 1, m.end()
        while depth and j < len(src):
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        src = src[j:]
    out.append(src)
    return re.sub(r"//.*", "", "".join(out))


def main():
    files = modules(ROOT)

    def resolve(path):
        for i in range(len(path), -1, -1):
            if tuple(path[:i]) in files:
                return tuple(path[:i])
        return None

    edges = {m: set() for m in files}
    for mod, path in files.items():
        if mod and mod[-1] == "tests":
            continue
        with open(path) as f:
            src = without_tests(f.read())
        for m in PATH.finditer(src):
            base = [] if m.group(1) == "crate" else list(mod[:-1])
            head = base + m.group(2).split("::")[1:]
            targets = [head]
            for item in (m.group(3) or "").split(","):
                item = item.strip().split(" as ")[0]
                if item and item != "self":
                    targets.append(head + [p for p in item.split("::") if p and "{" not in p])
            for t in targets:
                r = resolve(t)
                if r is not None and r != mod:
                    edges[mod].add(r)

    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                found.append(comp)

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    name = lambda m: "/".join(m) or "lib"
    for comp in found:
        members = set(comp)
        print("import cycle: " + ", ".join(sorted(name(m) for m in comp)))
        for v in sorted(comp):
            for w in sorted(edges[v] & members):
                print(f"    {name(v)} -> {name(w)}")
    print(f"{len(files)} files, {sum(map(len, edges.values()))} imports between them, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
