"""docs/architecture.md tells the truth: every module of the package is named there once, no
module it names is missing, and the layer count it states is the import contract's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "agentcred"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> set[str]:
    return {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if path.name != "__init__.py"}


def table_rows() -> list[str]:
    return re.findall(r"^\| `([\w/]+\.py)` \|", DOC.read_text(), flags=re.MULTILINE)


def test_every_module_is_named_once_in_the_modules_table() -> None:
    rows = table_rows()
    assert len(rows) == len(set(rows)), f"named twice: {sorted({r for r in rows if rows.count(r) > 1})}"
    named, present = set(rows), modules()
    assert not present - named, f"modules docs/architecture.md does not name: {sorted(present - named)}"
    assert not named - present, f"docs/architecture.md names modules that do not exist: {sorted(named - present)}"


def test_every_path_the_document_mentions_exists() -> None:
    mentioned = set(
        re.findall(r"`((?:api|rules|platform|sources|runtime|app|client|devcluster)/[\w/]+\.py)`", DOC.read_text())
    )
    missing = {path for path in mentioned if not (PACKAGE / path).exists()}
    assert not missing, f"docs/architecture.md mentions files that do not exist: {sorted(missing)}"


def test_the_layer_count_is_the_contracts() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    top = next(c for c in contracts if c["type"] == "layers" and "containers" not in c)
    stated = re.search(r"\*\*(\d+) layers\*\*", DOC.read_text())
    assert stated is not None, "docs/architecture.md must state the layer count as **N layers**"
    assert int(stated.group(1)) == len(top["layers"])


def test_every_runtime_group_is_described() -> None:
    groups = {p.name for p in (PACKAGE / "runtime").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    text = DOC.read_text()
    assert all(f"runtime/{group}/" in text for group in groups), groups
