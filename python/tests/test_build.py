"""The wheel maturin builds reuses the artifacts of `cargo test --workspace`
only while every crate the binding depends on gets the same features in
both builds (python/Cargo.toml's feature unification). A crate whose
features differ is compiled twice on a clean clone, and its dependents too."""

import shutil
import subprocess
from pathlib import Path
from typing import Dict, Set

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def features(*args: str) -> Dict[str, Set[str]]:
    out = subprocess.run(
        ["cargo", "tree", "--locked", "--prefix", "none", "-f", "{p} {f}", *args],
        cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    by_crate: Dict[str, Set[str]] = {}
    for line in out.splitlines():
        parts = line.replace(" (*)", "").split()
        if len(parts) < 2:
            continue
        rest = [p for p in parts[2:] if not p.startswith("(")]
        by_crate.setdefault(f"{parts[0]} {parts[1]}", set()).add(rest[-1] if rest else "")
    return by_crate


def test_the_wheel_build_gets_the_features_of_the_workspace_test_build() -> None:
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not on PATH")
    wheel = features("-p", "genesis-python", "-e", "normal,build")
    tests = features("--workspace", "-e", "normal,build,dev")
    differ = {k: (v, tests.get(k)) for k, v in wheel.items() if tests.get(k) != v}
    assert not differ, (
        "these crates get other features in the wheel's build than in `cargo test --workspace`: "
        f"add them to the feature unification in python/Cargo.toml: {differ}"
    )
