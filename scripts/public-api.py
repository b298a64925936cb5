#!/usr/bin/env python3
"""The public API of offstate's crates, one item per line, from rustdoc's
JSON output: what a semver promise covers, so that a change to it shows up
in review as a diff of api/<crate>.txt.

    scripts/public-api.py            # regenerate api/*.txt
    scripts/public-api.py --check    # fail if api/*.txt is out of date

rustdoc's JSON output is unstable; RUSTC_BOOTSTRAP=1, given to rustdoc
alone, lets the stable toolchain produce it (cargo-public-api needs a nightly toolchain this
project does not have). Each line is `<kind> <path>`; methods, fields and
variants are listed under their type, trait implementations as
`impl <Trait> for <Type>`. Crates are documented with all features on, as
docs.rs shows them.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = [
    ("offstate-core", "offstate_core"),
    ("offstate-redis", "offstate_redis"),
    ("offstate-dynamodb", "offstate_dynamodb"),
    ("offstate-memcached", "offstate_memcached"),
    ("offstate-cache", "offstate_cache"),
    ("offstate-tower", "offstate_tower"),
    ("offstate-admin", "offstate_admin"),
]
# Traits whose implementations are noise in a listing (derives, auto traits).
QUIET_TRAITS = {
    "Send", "Sync", "Unpin", "UnwindSafe", "RefUnwindSafe", "Freeze",
    "Clone", "Copy", "Debug", "PartialEq", "Eq", "PartialOrd", "Ord", "Hash",
    "StructuralPartialEq", "Default",
}


def rustdoc_wrapper(directory):
    """A `rustdoc` that runs with RUSTC_BOOTSTRAP=1, for cargo's RUSTDOC:
    the JSON output is unlocked for rustdoc alone. Set for cargo itself,
    RUSTC_BOOTSTRAP marks the crates whose build scripts watch it
    (proc-macro2, thiserror), and nearly every dependency with them, as
    changed: each switch between this script and a plain cargo run
    checked them all again."""
    real = os.environ.get("RUSTDOC", "rustdoc")
    path = os.path.join(directory, "rustdoc-json")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nRUSTC_BOOTSTRAP=1 exec {shlex.quote(real)} "$@"\n')
    os.chmod(path, 0o755)
    return path


def rustdoc_json(libs, rustdoc):
    """Every listed crate's rustdoc JSON, from one `cargo doc` of the
    workspace's libraries with all features on: the same dependency set as
    scripts/check-docs.sh's `cargo doc`, so the dependencies it checked are
    not checked again (a `cargo rustdoc -p` per crate resolved the features
    of each crate apart, and checked the dependencies of each anew)."""
    env = dict(os.environ, RUSTDOC=rustdoc,
               RUSTDOCFLAGS="-Z unstable-options --output-format json")
    subprocess.run(
        ["cargo", "doc", "-q", "--workspace", "--no-deps", "--all-features", "--lib"],
        cwd=ROOT, env=env, check=True)
    target = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, capture_output=True, check=True, text=True)
    target_dir = json.loads(target.stdout)["target_directory"]
    docs = {}
    for lib in libs:
        with open(os.path.join(target_dir, "doc", lib + ".json")) as f:
            docs[lib] = json.load(f)
    return docs


def kind_of(item):
    inner = item.get("inner", {})
    return next(iter(inner)) if isinstance(inner, dict) and inner else "item"


def listing(doc):
    index = doc["index"]
    lines = set()

    def public(item):
        return item.get("visibility") == "public"

    def trait_name(impl):
        trait = impl.get("trait")
        if not trait:
            return None
        return trait.get("path") or trait.get("name")

    def walk_impls(type_path, impls):
        for impl_id in impls:
            impl_item = index.get(str(impl_id))
            if not impl_item:
                continue
            impl = impl_item["inner"]["impl"]
            if impl.get("is_synthetic") or impl.get("blanket_impl"):
                continue
            trait = trait_name(impl)
            if trait:
                short = trait.split("::")[-1]
                if short not in QUIET_TRAITS:
                    lines.add(f"impl {trait} for {type_path}")
                continue
            for member_id in impl.get("items", []):
                member = index.get(str(member_id))
                if member and public(member) and member.get("name"):
                    lines.add(f"{kind_of(member)} {type_path}::{member['name']}")

    def walk(item_id, prefix, seen):
        if item_id in seen:
            return
        seen = seen | {item_id}
        item = index.get(str(item_id))
        if not item:
            return
        kind = kind_of(item)
        inner = item["inner"][kind] if kind != "item" else {}
        if kind == "use":
            target = inner.get("id")
            name = inner.get("name")
            if inner.get("is_glob"):
                target_item = index.get(str(target)) if target is not None else None
                if target_item and kind_of(target_item) == "module":
                    for child in target_item["inner"]["module"]["items"]:
                        walk(child, prefix, seen)
                else:
                    lines.add(f"use {prefix}::* (from {inner.get('source')})")
                return
            if target is not None and str(target) in index:
                target_item = index[str(target)]
                renamed = dict(target_item, name=name)
                index[f"{target}:{prefix}:{name}"] = renamed
                walk(f"{target}:{prefix}:{name}", prefix, seen)
            else:
                lines.add(f"use {prefix}::{name} (from {inner.get('source')})")
            return
        if not public(item) and prefix:
            return
        name = item.get("name")
        path = f"{prefix}::{name}" if prefix and name else (name or prefix)
        if kind == "module":
            if prefix:
                lines.add(f"mod {path}")
            for child in inner.get("items", []):
                walk(child, path, seen)
            return
        lines.add(f"{kind} {path}")
        if kind == "struct":
            fields = inner.get("kind", {})
            plain = fields.get("plain") if isinstance(fields, dict) else None
            if plain:
                for field_id in plain.get("fields", []):
                    field = index.get(str(field_id))
                    if field and public(field):
                        lines.add(f"field {path}::{field['name']}")
            walk_impls(path, inner.get("impls", []))
        elif kind == "enum":
            for variant_id in inner.get("variants", []):
                variant = index.get(str(variant_id))
                if variant:
                    lines.add(f"variant {path}::{variant['name']}")
            walk_impls(path, inner.get("impls", []))
        elif kind == "trait":
            for member_id in inner.get("items", []):
                member = index.get(str(member_id))
                if member and member.get("name"):
                    lines.add(f"{kind_of(member)} {path}::{member['name']}")
        elif kind in ("union",):
            walk_impls(path, inner.get("impls", []))

    walk(doc["root"], "", frozenset())
    return sorted(lines)


def main():
    args = sys.argv[1:]
    if any(arg in ("-h", "--help") for arg in args):
        print(__doc__.strip())
        return 0
    unknown = [arg for arg in args if arg != "--check"]
    if unknown:
        print(f"public-api.py: unknown argument(s) {' '.join(unknown)}; see --help", file=sys.stderr)
        return 2
    check = "--check" in args
    out_dir = os.path.join(ROOT, "api")
    os.makedirs(out_dir, exist_ok=True)
    stale = []
    total = 0
    scratch = tempfile.mkdtemp(prefix="public-api.")
    try:
        docs = rustdoc_json([lib for _, lib in CRATES], rustdoc_wrapper(scratch))
        listings = [(package, listing(docs[lib])) for package, lib in CRATES]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for package, lines in listings:
        total += len(lines)
        text = "".join(line + "\n" for line in lines)
        path = os.path.join(out_dir, f"{package}.txt")
        if check:
            try:
                with open(path) as f:
                    if f.read() != text:
                        stale.append(path)
            except FileNotFoundError:
                stale.append(path)
        else:
            with open(path, "w") as f:
                f.write(text)
        print(f"{package}: {len(lines)} public items")
    print(f"total: {total} public items")
    if stale:
        print("the public API changed; run scripts/public-api.py and commit api/:", file=sys.stderr)
        for path in stale:
            print(f"  {os.path.relpath(path, ROOT)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
