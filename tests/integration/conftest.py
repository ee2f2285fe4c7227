"""Every test under integration/ needs a Kubernetes control plane (the local one by default):
marked here once, so `-m "not cluster"` leaves them all out."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.cluster)
