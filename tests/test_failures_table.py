"""README's "Failures" table: every fault has a row, and every test a row names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The faults issue 18 asked the table to cover, as the rows begin.
FAULTS = (
    "Discord's gateway connection drops",
    "the Matrix homeserver restarts",
    "an adapter raises",
    "the database is read-only, full or locked",
    "the Chroma store is unavailable",
    "the model fails to load",
    "SIGKILL",
    "a second `run` on the same database",
)


def failures_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Failures\n")
    return readme[start : readme.index("\n## ", start + 1)]


def test_every_fault_has_a_row_and_every_row_names_tests_that_exist() -> None:
    rows = [line for line in failures_section().splitlines() if line.startswith("| ")][1:]
    for fault in FAULTS:
        assert any(row.startswith(f"| {fault}") for row in rows), fault
    for row in rows:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        assert named, f"a row without tests: {row[:60]}"
        for path, test in named:
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            defined = {
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            assert test in defined, f"{path}::{test}"
