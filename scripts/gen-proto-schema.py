#!/usr/bin/env python3
"""Generates apiserver/src/proto_schema.json: for every Kubernetes protobuf message, its fields
(tag -> JSON name, type, repeated). The API server uses it to turn protobuf request bodies (what
kubectl's generators and other client-go typed clients send) into JSON.

Inputs are the published definitions of the Kubernetes API, as two crates carry them:
k8s-pb (prost types: message names, field tags, wire types) and k8s-openapi (the JSON field
names, e.g. `podIP` for `pod_ip`). Run it after changing either version:

    python3 scripts/gen-proto-schema.py K8S_PB_SRC K8S_OPENAPI_SRC > apiserver/src/proto_schema.json

where the two arguments are the crates' source folders (for example under ~/.cargo/registry/src
after `cargo fetch` of a project depending on k8s-pb 0.9 and k8s-openapi 0.24 with v1_32).
"""
import json
import os
import re
import sys

pb_src, openapi_src = sys.argv[1], sys.argv[2]

# snake_case field name -> JSON names used by Kubernetes
names = {}
for root, _, files in os.walk(os.path.join(openapi_src, "src", "v1_32")):
    for f in files:
        if f.endswith(".rs"):
            text = open(os.path.join(root, f)).read()
            for json_name, snake in re.findall(r'"([A-Za-z0-9$]+)" => Field::Key_([a-z0-9_]+)', text):
                names.setdefault(snake.rstrip("_"), set()).add(json_name)


def camel(snake):
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def json_name(rust_field):
    snake = rust_field.replace("r#", "").rstrip("_")
    c = camel(snake)
    cands = names.get(snake, set())
    if c in cands or not cands:
        return c
    if len(cands) == 1:
        return next(iter(cands))
    return c


def resolve(type_path, module):
    """A Rust type path relative to `module` (a list of segments) -> a dotted message key."""
    segs = type_path.split("::")
    mod = list(module)
    while segs and segs[0] == "super":
        mod.pop()
        segs.pop(0)
    if segs and segs[0] == "crate":
        mod, segs = [], segs[1:]
    return ".".join(mod + segs)


STRUCT = re.compile(r"pub struct (\w+) \{(\}|.*?\n\})", re.S)
ATTR = re.compile(r"#\[prost\(([^]]*)\)\]")


def fields_of(body):
    """(prost attributes, field name, Rust type) for each field; types may span lines."""
    out = []
    for m in ATTR.finditer(body):
        decl = re.compile(r"pub (r#)?([a-z0-9_]+):").search(body, m.end())
        i, depth, start = decl.end(), 0, decl.end()
        while i < len(body):
            c = body[i]
            if c == "<":
                depth += 1
            elif c == ">":
                depth -= 1
            elif c == "," and depth == 0:
                break
            i += 1
        rtype = re.sub(r"\s+", "", body[start:i])
        out.append((m.group(1), (decl.group(1) or "") + decl.group(2), rtype))
    return out


schema = {}
for root, _, files in os.walk(os.path.join(pb_src, "src")):
    for f in files:
        if f != "mod.rs":
            continue
        rel = os.path.relpath(root, os.path.join(pb_src, "src"))
        module = [] if rel == "." else rel.split(os.sep)
        text = open(os.path.join(root, f)).read()
        for name, body in STRUCT.findall(text):
            fields = {}
            for attrs, field, rtype in fields_of(body):
                tag = re.search(r'tag = "(\d+)"', attrs).group(1)
                repeated = "repeated" in attrs
                m = re.match(r'btree_map = "string, (\w+)"', attrs.strip())
                if m:
                    vt = m.group(1)
                    if vt == "message":
                        inner = re.search(r"BTreeMap<[^,]+,(.+)>$", rtype).group(1).rstrip(",")
                        vt = "m:" + resolve(inner, module)
                    ftype = "map:" + vt
                else:
                    kind = attrs.split(",")[0].strip().split(" ")[0]
                    if kind == "message":
                        inner = re.search(r"<(.*)>$", rtype).group(1)
                        inner = re.sub(r"^::prost::alloc::boxed::Box<(.*)>$", r"\1", inner).rstrip(",")
                        ftype = "m:" + resolve(inner, module)
                    else:
                        ftype = kind
                fields[tag] = [json_name(field), ftype, repeated]
            schema[".".join(module + [name])] = fields

json.dump(schema, sys.stdout, separators=(",", ":"), sort_keys=True)
