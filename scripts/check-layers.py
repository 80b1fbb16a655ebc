#!/usr/bin/env python3
"""The layering check: every internal dependency points up ARCHITECTURE.md's code map.

Reads the code map table (crate, owns, may depend on) and `cargo metadata`, and fails when a
crate depends (normal or build dependency) on a crate in a row below its own, or on one that
its row does not name ("all above" allows every crate above; "nothing internal" none).
Dev-dependencies (for tests) are exempt. Prints one line per problem and exits 1, or says
what it checked.
"""
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
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
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
for p in problems:
    print(f"check-layers: {p}")
if problems:
    sys.exit(1)
print(f"check-layers: {len(members)} crates, every internal dependency points up the code map")
