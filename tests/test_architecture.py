"""The code keeps to the layers of docs/ARCHITECTURE.md: every import of a tunesmith module points down."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tunesmith"
PAGE = ROOT / "docs" / "ARCHITECTURE.md"
FLOOR_ORDER = ["models", "runs", "config", "errors"]  # within layer 1, each may import those after it


def layers_from_page(text: str) -> dict[str, int]:
    """{package: layer} from the page's layer table (rows `| N | `pkg`, `pkg` | ... |`)."""
    table = text.split("<!-- layers:", 1)[1]
    ranks = {}
    for line in table.splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row:
            for package in re.findall(r"`([\w_]+)`", row.group(2)):
                ranks[package] = int(row.group(1))
        elif ranks and not line.startswith("|"):
            break
    return ranks


def unit_of(module: str) -> str:
    """`tunesmith.prepare.templates` → `prepare`; `tunesmith.config` → `config`; `tunesmith` → `tunesmith`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tunesmith"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every tunesmith import in a file, `from tunesmith import x` read as `tunesmith.x`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tunesmith"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "tunesmith":
            if node.module == "tunesmith":
                found += [(node.lineno, f"tunesmith.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def rank(unit: str, ranks: dict[str, int]) -> tuple[int, int]:
    """Layer, then position inside the floor (the floor's own order is a chain)."""
    floor_position = len(FLOOR_ORDER) - FLOOR_ORDER.index(unit) if unit in FLOOR_ORDER else 0
    return ranks[unit], floor_position


def forbidden_arrows(ranks: dict[str, int]) -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        importer = unit_of(module_name(path))
        if importer == "tunesmith" or importer == "__version__":
            continue  # the package face: hands Tuner on lazily
        if importer not in ranks:
            problems.append(f"{path.relative_to(ROOT)}: package `{importer}` is not in docs/ARCHITECTURE.md")
            continue
        for line, module in imported_modules(path):
            target = unit_of(module)
            if target in ("tunesmith", "__version__") or target == importer:
                continue
            if target not in ranks:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports `{module}`, not in docs/ARCHITECTURE.md")
            elif rank(target, ranks) >= rank(importer, ranks):
                problems.append(f"{path.relative_to(ROOT)}:{line}: `{importer}` (layer {ranks[importer]}) imports "
                                f"`{module}` (layer {ranks[target]}): the page allows only arrows to lower layers")
    return problems


def test_every_import_points_down_the_layers():
    ranks = layers_from_page(PAGE.read_text(encoding="utf-8"))
    assert {"cli", "api", "train", "evaluate", "use", "prepare", "data", "config", "errors"} <= set(ranks)
    assert forbidden_arrows(ranks) == []


def test_the_check_catches_an_upward_arrow(tmp_path, monkeypatch):
    """A data module importing the trainer must be reported (the check could otherwise pass vacuously)."""
    bad = SRC / "data" / "_architecture_probe.py"
    bad.write_text("from tunesmith.train.loop import train\nimport tunesmith.report\n", encoding="utf-8")
    try:
        problems = forbidden_arrows(layers_from_page(PAGE.read_text(encoding="utf-8")))
    finally:
        bad.unlink()
    assert [p for p in problems if "_architecture_probe" in p] == [
        "src/tunesmith/data/_architecture_probe.py:1: `data` (layer 2) imports `tunesmith.train.loop` (layer 7): "
        "the page allows only arrows to lower layers",
        "src/tunesmith/data/_architecture_probe.py:2: `data` (layer 2) imports `tunesmith.report` (layer 7): "
        "the page allows only arrows to lower layers"]


@pytest.mark.parametrize("importer, target, allowed", [("runs", "config", True), ("config", "runs", False),
                                                       ("train", "report", False), ("train", "evaluate", True)])
def test_layer_order(importer, target, allowed):
    ranks = layers_from_page(PAGE.read_text(encoding="utf-8"))
    assert (rank(target, ranks) < rank(importer, ranks)) is allowed
