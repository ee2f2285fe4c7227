"""The LICENSE file is the license pyproject.toml declares (and the image's label names)."""

import tomllib

from clusterkit import REPO


def test_the_license_file_is_the_one_declared() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    text = (REPO / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert [line.strip() for line in text.splitlines()[:2]] == ["Apache License", "Version 2.0, January 2004"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (REPO / "Dockerfile").read_text()
