#!/usr/bin/env python3
"""The house rules of src/, checked on every CI run (issue 16):

1. no import circle between source files: a file that names another (`use crate::a::b`,
   `super::x`, or a child module by name after `mod child;`) depends on it, and no file may
   depend, directly or through others, on a file that depends on it back (test modules aside);
2. at most 20 entries at the top of src/;
3. no shipped source file over 1,000 lines (test files and inline test modules not counted).

Usage: python3 .ci/house.py [SRC_DIR] [-v]   (-v prints every file's dependencies)
Exit status 1 when a rule is broken. Reads the code as text: a path spelled out in a macro or
a string is not seen, which errs towards missing an arrow, never inventing one.
"""
import os
import re
import sys

MAX_TOP_ENTRIES = 20
MAX_SHIPPED_LINES = 1000

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
TEST_MOD_DECL = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")
INLINE_TESTS = re.compile(r"^#\[cfg\(test\)\]\s*mod tests\s*\{", re.M)
# `crate::a::b`, `super::a`, `super::super::a`, optionally followed by a `{x, y::z}` group.
PATH = re.compile(r"\b(crate|super)(?=::)((?:::\w+)*)(?:::\{([^;]*?)\})?")


def module_files(root):
    """Module path (a tuple) -> file, for every .rs file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            files[tuple(parts)] = path
    return files


def shipped_text(text):
    """The text without its inline test module and comments."""
    m = INLINE_TESTS.search(text)
    if m:
        text = text[: m.start()]
    return re.sub(r"//[^\n]*", "", text)


def dependencies(module, text, files):
    """The modules (files) that `module`'s text names."""

    def resolve(path):
        for n in range(len(path), 0, -1):  # the longest prefix that is a file
            if tuple(path[:n]) in files:
                return tuple(path[:n])
        return None

    found = set()
    for m in PATH.finditer(text):
        segments = [s for s in m.group(2).split("::") if s]
        if m.group(1) == "crate":
            base = []
        else:
            base = list(module[:-1])
            while segments and segments[0] == "super":
                segments.pop(0)
                base = base[:-1]
        targets = [base + segments]
        for item in (m.group(3) or "").split(","):
            item = item.split(" as ")[0].strip("{} \n")
            if item and item != "self":
                targets.append(base + segments + item.split("::"))
        found.update(resolve(t) for t in targets)
    body = MOD_DECL.sub("", text)
    for child in MOD_DECL.findall(text):
        if child != "tests" and re.search(r"(?<!::)\b(?:self::)?" + child + r"::", body):
            found.add(resolve(list(module) + [child]))
    return {d for d in found if d not in (None, (), module)}


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def name(module):
    return "::".join(module) or "crate"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    root = args[0] if args else "src"
    files = module_files(root)
    test_only = set()
    for module, path in files.items():
        for child in TEST_MOD_DECL.findall(open(path).read()):
            test_only.add(module + (child,))

    def is_test(module):
        return "tests" in module or any(module[:n] in test_only for n in range(1, len(module) + 1))

    edges = {}
    for module, path in files.items():
        if not is_test(module):
            edges[module] = dependencies(module, shipped_text(open(path).read()), files)
    if "-v" in sys.argv:
        for module in sorted(edges):
            print(name(module), "->", ", ".join(sorted(name(d) for d in edges[module])))

    problems = 0
    for component in circles(edges):
        problems += 1
        print("CYCLE:", ", ".join(sorted(name(m) for m in component)))
        for m in component:
            print("   ", name(m), "->", ", ".join(name(d) for d in edges[m] if d in component))
    print(f"{problems} import circle(s) among {len(edges)} modules")

    top = sorted(os.listdir(root))
    if len(top) > MAX_TOP_ENTRIES:
        problems += 1
        print(f"{root}/ has {len(top)} entries at its top (at most {MAX_TOP_ENTRIES})")
    largest = (0, "")
    for module, path in files.items():
        if is_test(module):
            continue
        text = open(path).read()
        m = INLINE_TESTS.search(text)
        lines = (text[: m.start()] if m else text).count("\n")
        largest = max(largest, (lines, path))
        if lines > MAX_SHIPPED_LINES:
            problems += 1
            print(f"{path}: {lines} shipped lines (at most {MAX_SHIPPED_LINES}: split it)")
    print(f"{len(top)} entries at the top of {root}/; largest shipped file {largest[1]} ({largest[0]} lines)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
