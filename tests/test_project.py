"""What a new user reads first: the version everywhere alike, where the project lives, how to
install it before a release, and shell completion as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import batchpilot

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(data, dict)
    return data


def test_the_changelog_leads_with_the_package_version() -> None:
    version = project()["version"]
    assert version == batchpilot.__version__
    headings = re.findall(r"^## (\S+) \((.+)\)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings, "the CHANGELOG names versions: ## 0.1.0 (unreleased) or (YYYY-MM-DD)"
    assert headings[0][0] == version
    assert all(re.fullmatch(r"unreleased|\d{4}-\d{2}-\d{2}", when) for _, when in headings)


def test_the_readme_installs_from_the_repository_before_a_release() -> None:
    urls = project()["urls"]
    assert isinstance(urls, dict)
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    readme = (ROOT / "README.md").read_text()
    unreleased = re.search(r"^## \S+ \(unreleased\)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    if unreleased:
        assert not re.search(r"pip install '?batchpilot(\[\w+\])?'?(?!\s*@)(\s|$)", readme), (
            "no release exists: install from the repository"
        )
        assert f"git+{urls['Repository']}" in readme
    assert f"git clone {urls['Repository']}" in readme


def test_shell_completion_works_as_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "_BATCHPILOT_COMPLETE=bash_source batchpilot" in readme
    base = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = subprocess.run(
        [sys.executable, "-m", "batchpilot"],
        env={**base, "_BATCHPILOT_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "_BATCHPILOT_COMPLETE=bash_complete" in script.stdout, script.stderr
    words = subprocess.run(
        [sys.executable, "-m", "batchpilot"],
        env={
            **base,
            "_BATCHPILOT_COMPLETE": "bash_complete",
            "COMP_WORDS": "batchpilot sta",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert words.stdout.split() == ["plain,status"], words.stdout + words.stderr
