#!/usr/bin/env python3
"""The layering check: every internal dependency points up ARCHITECTURE.md's code map, and
no crate's files import each other in a cycle.

Reads the code map table (crate, owns, may depend on) and `cargo metadata`, and fails when a
crate depends (normal or build dependency) on a crate in a row below its own, or on one that
its row does not name ("all above" allows every crate above; "nothing internal" none).
Dev-dependencies (for tests) are exempt. Then, inside each crate, it follows the `crate::`
paths of each file's code (not its comments or its test module) and fails on a cycle between
files (a module and its own submodules do not count). Prints one line per problem and exits
1, or says what it checked.
"""
import os
import json
import pathlib
import re
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
doc = (root / "ARCHITECTURE.md").read_text()
rows = re.findall(r"^\| `([a-z-]+)/` \| [^|]* \| ([^|]*) \|$", doc, re.M)
if not rows:
    sys.exit("check-layers: no code map table found in ARCHITECTURE.md")
order = [name for name, _ in rows]
allowed = {}
for i, (name, deps) in enumerate(rows):
    deps = deps.strip()
    if deps == "all above":
        allowed[name] = set(order[:i])
    elif deps == "nothing internal":
        allowed[name] = set()
    else:
        allowed[name] = {d.strip() for d in deps.split(",")}

meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
)
members = {p["name"]: p for p in meta["packages"]}
problems = []
for name in members:
    if name not in order:
        problems.append(f"crate {name} is not in ARCHITECTURE.md's code map")
for name, pkg in members.items():
    if name not in order:
        continue
    for dep in pkg["dependencies"]:
        if dep["name"] not in members or dep.get("kind") == "dev":
            continue
        target = dep["name"]
        if target not in order:
            continue
        if order.index(target) >= order.index(name):
            problems.append(f"{name} -> {target}: points down the table (or sideways)")
        elif target not in allowed[name]:
            problems.append(f"{name} -> {target}: not in {name}'s row of the code map")
for name in order:
    if name not in members:
        problems.append(f"the code map names {name}, which is not a workspace member")


def file_cycles(crate_dir):
    """Cycles between the files of one crate, as lists of module paths."""
    src = root / crate_dir / "src"
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                path = pathlib.Path(d) / n
                parts = list(path.relative_to(src).with_suffix("").parts)
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                files["::".join(parts) or "crate"] = path
    edges = {m: set() for m in files}
    for m, path in files.items():
        text = path.read_text()
        text = text.split("#[cfg(test)]")[0]
        code = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
        for ref in re.findall(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", code):
            parts = ref.split("::")
            for k in range(len(parts), 0, -1):
                target = "::".join(parts[:k])
                if target in files:
                    related = target == m or m.startswith(target + "::") or target.startswith(m + "::")
                    if not related:
                        edges[m].add(target)
                    break
    cycles, state, stack = [], {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(files):
        if m not in state:
            visit(m)
    return cycles


for name in order:
    if name in members:
        for cycle in file_cycles(pathlib.Path(members[name]["manifest_path"]).parent.name):
            problems.append(f"{name}: files import each other in a cycle: {' -> '.join(cycle)}")
for p in problems:
    print(f"check-layers: {p}")
if problems:
    sys.exit(1)
print(f"check-layers: {len(members)} crates, every internal dependency points up the code map, no cycle between the files of a crate")
