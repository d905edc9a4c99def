"""The recovery guide's Python snippets, read from the guide's text."""

import ast
import asyncio
import contextlib
import io
import re
from pathlib import Path
from typing import Dict, List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
GUIDE = REPO_ROOT / "docs/recovery-guide.md"
# The shared original (present beside the repository on the team's machines and in CI).
SHARED_GUIDE = REPO_ROOT.parent / "shared/seed/recovery-guide.md"

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets() -> List[Tuple[str, str]]:
    """Every ```python block of the guide, with the heading above it."""
    text = GUIDE.read_text()
    out = []
    for m in _FENCE.finditer(text):
        heading = [h for h in re.findall(r"^#+ (.+)$", text[: m.start()], re.M)][-1]
        out.append((heading, m.group(1)))
    return out


def substitute(code: str, replacements: Dict[str, str]) -> str:
    """Replaces each key of `replacements` (paths and times only); each must
    occur, so a change to the guide is noticed."""
    for old, new in replacements.items():
        assert old in code, f"the guide's snippet no longer contains {old!r}:\n{code}"
        code = code.replace(old, new)
    return code


def run(code: str, namespace: dict) -> List[str]:
    """Runs a snippet (top-level `await` allowed) in `namespace`; returns the
    lines it printed."""
    compiled = compile(code, "<recovery-guide>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = eval(compiled, namespace)  # noqa: S307 - the guide's own code
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return out.getvalue().splitlines()
