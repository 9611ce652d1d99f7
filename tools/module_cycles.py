#!/usr/bin/env python3
"""Fails when the top-level modules of a crate's `src/` import each other in a circle.

Each `crate::x::…` and `super::…` path in a file (in `use` lines and inline) is an arrow from the
file's top-level module to `x`. A strongly connected group of two or more modules is a cycle.

    tools/module_cycles.py host/src          # prints the graph's size, or each cycle; exit 1 on one
    tools/module_cycles.py host/src --edges  # also prints every arrow with the files behind it
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PATH_START = re.compile(r"\b(crate|super)::")
LINE_COMMENT = re.compile(r"//.*")


def module_path(src: Path, file: Path) -> list[str]:
    """`api/code.rs` → [api, code]; `api/mod.rs` → [api]; `lib.rs` → []."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return parts


def first_segments(text: str, at: int) -> list[str]:
    """The first name of each path starting at `at`: `x::y` → [x]; `{x, y::z}` → [x, y]."""
    if at < len(text) and text[at] == "{":
        depth, end = 0, at
        for end in range(at, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                break
        names, depth, item = [], 0, ""
        for ch in text[at + 1 : end]:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                names.append(item)
                item = ""
            else:
                item += ch
        names.append(item)
        return [m.group(0) for m in (IDENT.match(n.strip()) for n in names) if m]
    match = IDENT.match(text, at)
    return [match.group(0)] if match else []


def top_level_modules(src: Path) -> set[str]:
    names = {p.stem for p in src.glob("*.rs")} | {p.name for p in src.iterdir() if p.is_dir()}
    return names - {"lib", "main"}


def arrows(src: Path) -> dict[tuple[str, str], set[str]]:
    top_level = top_level_modules(src)
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for file in sorted(src.rglob("*.rs")):
        here = module_path(src, file)
        if not here:
            continue  # the crate root stands above every module
        text = "\n".join(LINE_COMMENT.sub("", line) for line in file.read_text().splitlines())
        for start in PATH_START.finditer(text):
            base = [] if start.group(1) == "crate" else here[:-1]
            at = start.end()
            # `super::super::x`: climb once per further `super::`.
            while text.startswith("super::", at):
                base, at = base[:-1], at + len("super::")
            for name in first_segments(text, at):
                target = (base + [name])[0]
                if target in top_level and target != here[0]:
                    found[(here[0], target)].add(str(file.relative_to(src)))
    return found


def cycles(edges) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    src = Path(sys.argv[1])
    found = arrows(src)
    if "--edges" in sys.argv:
        for (a, b), files in sorted(found.items()):
            print(f"{a} -> {b}   ({', '.join(sorted(files))})")
    groups = cycles(found)
    if not groups:
        count = len(top_level_modules(src))
        print(f"{src}: no import cycle between its {count} top-level modules ({len(found)} arrows)")
        return 0
    for group in groups:
        print(f"{src}: import cycle between {', '.join(group)}:")
        for (a, b), files in sorted(found.items()):
            if a in group and b in group:
                print(f"  {a} -> {b}   ({', '.join(sorted(files))})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
