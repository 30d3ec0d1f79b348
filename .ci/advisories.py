#!/usr/bin/env python3
"""Fail when Cargo.lock resolves a crate below the release that fixes a known advisory.

Our own small list: the RustSec database is out of reach here, and `cargo audit` does not
carry these GitHub advisories anyway. Add a row when an advisory names a crate we build.
"""
import sys
import tomllib

# crate, first fixed version, the advisories that version fixes
FLOORS = [
    ("russh", (0, 63, 1),
     "GHSA-47hw-gvq5-r2gm (High: a server drives channel callbacks for channel ids the client "
     "never opened: panics, forged exit statuses), GHSA-p8qx-h547-fjw9 (mac=none with a "
     "MAC-requiring cipher panics the session)"),
    # russh 0.63.1 and later build on russh-cryptovec 0.62.0; older ones belong to the
    # vulnerable russh lines.
    ("russh-cryptovec", (0, 62, 0),
     "the russh-cryptovec of the russh lines before GHSA-47hw-gvq5-r2gm / GHSA-p8qx-h547-fjw9"),
]


def version(text):
    core = text.split("-")[0].split("+")[0]
    return tuple(int(part) for part in core.split("."))


def main(path="Cargo.lock"):
    with open(path, "rb") as lock:
        packages = tomllib.load(lock).get("package", [])
    bad = []
    for name, floor, why in FLOORS:
        for package in packages:
            if package["name"] == name and version(package["version"]) < floor:
                fixed = ".".join(map(str, floor))
                bad.append(f"{name} {package['version']} < {fixed}: {why}")
    for line in bad:
        print(f"vulnerable dependency in {path}: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
