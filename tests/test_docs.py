"""Every code block of README.md and docs/*.md runs as written.

Each page runs in a temporary directory holding a copy of `examples/`, its blocks in order:
python blocks share one namespace per page, and each line of a shell block is a `batchpilot`
command run through the CLI's entry point (`batchpilot serve` as its own process, on a free port
that later blocks are pointed at). A local server with the synthetic responder stands in for
OpenAI (`OPENAI_BASE_URL`), and the local provider answers with the synthetic responder
(`BATCHPILOT_RESPONDER`). A block that cannot run is marked just before it with
`<!-- no-run: why -->`; YAML, JSON and unlabelled blocks are data, not run.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpilot.cli import cli
from batchpilot.server import serve

from helpers import answers, free_port

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
_FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
_NO_RUN = re.compile(r"^<!--\s*no-run:(.*?)-->\s*$")
_DOC_PORT = "8089"  # the port `batchpilot serve` listens on by default, as the pages say
_MAX_NO_RUN = 6  # marked blocks stay rare


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    no_run: str | None


def blocks(page: str, root: Path = ROOT) -> list[Block]:
    """The fenced code blocks of a page, with the reason of a `no-run` marker just before one."""
    found: list[Block] = []
    marker: str | None = None
    lines = (root / page).read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        text = lines[index]
        fence = _FENCE.match(text)
        mark = _NO_RUN.match(text.strip())
        if mark:
            marker = mark.group(1).strip()
        elif fence:
            start = index
            index += 1
            body: list[str] = []
            while index < len(lines) and not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            found.append(Block(page, start + 1, fence.group(1).lower(), "\n".join(body), marker))
            marker = None
        elif text.strip():
            marker = None
        index += 1
    return found


def commands(code: str) -> Iterator[list[str]]:
    """The commands of a shell block: one a line (a trailing backslash continues it), with
    comments removed."""
    pending = ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        if words:
            yield words


@dataclass
class Page:
    """What the blocks of one page share as they run."""

    directory: Path
    namespace: dict[str, Any]
    port: str | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def python(self, block: Block) -> None:
        code = block.code
        if self.port is not None:
            code = code.replace(f"127.0.0.1:{_DOC_PORT}", f"127.0.0.1:{self.port}")
        exec(compile(code, f"{block.page}:{block.line}", "exec", dont_inherit=True), self.namespace)

    def shell(self, block: Block) -> None:
        for words in commands(block.code):
            where = f"{block.page}:{block.line}: {shlex.join(words)}"
            assert words[0] == "batchpilot", (
                f"{where}: only batchpilot commands run; mark the block <!-- no-run: why -->"
            )
            if words[1:2] == ["serve"]:
                self.serve(words[2:], where)
                continue
            result = CliRunner().invoke(cli, words[1:], prog_name="batchpilot")
            assert result.exit_code == 0, f"{where} exited {result.exit_code}:\n{result.output}"

    def serve(self, flags: list[str], where: str) -> None:
        self.port = str(free_port())
        command = [sys.executable, "-m", "batchpilot", "serve", *flags, "--port", self.port]
        with (self.directory / "serve.log").open("ab") as log:
            process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=log)
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{where} stopped: " + (
                self.directory / "serve.log"
            ).read_text(errors="replace")
            if answers(f"http://127.0.0.1:{self.port}/_batchpilot/health"):
                return
            time.sleep(0.05)
        raise AssertionError(f"{where}: the server did not answer within 60 s")

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory like a fresh clone's root (its examples), with OpenAI played by a local
    server and the local model by the synthetic responder."""
    directory = tmp_path / "clone"
    shutil.copytree(ROOT / "examples", directory / "examples")
    with serve(tmp_path / "openai", responder="synthetic", time_scale=100_000) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "docs")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("BATCHPILOT_RESPONDER", "synthetic")
        monkeypatch.setenv("BATCHPILOT_POLL_INTERVAL", "0.05")
        monkeypatch.delenv("BATCHPILOT_STATE", raising=False)
        monkeypatch.chdir(directory)
        monkeypatch.syspath_prepend(str(directory))
        yield directory


@pytest.mark.parametrize("page", PAGES)
def test_every_block_runs(page: str, page_dir: Path) -> None:
    runner = Page(page_dir, {"__name__": "docs_" + re.sub(r"\W", "_", page)})
    try:
        for block in blocks(page):
            if block.no_run is not None:
                continue
            if block.lang in PYTHON:
                runner.python(block)
            elif block.lang in SHELL:
                runner.shell(block)
    finally:
        runner.close()
    assert Path.cwd() == page_dir


def test_blocks_not_run_are_few_and_say_why() -> None:
    marked = [b for page in PAGES for b in blocks(page) if b.no_run is not None]
    assert all(b.no_run for b in marked), [f"{b.page}:{b.line}" for b in marked if not b.no_run]
    assert len(marked) <= _MAX_NO_RUN, [f"{b.page}:{b.line}: {b.no_run}" for b in marked]


def test_a_marker_applies_to_the_next_block_only(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- no-run: needs a key -->\n\n```python\nx = 1\n```\n\n"
        "text\n\n```bash\nbatchpilot ls\n```\n"
    )
    found = blocks("page.md", tmp_path)
    assert [(b.lang, b.no_run) for b in found] == [("python", "needs a key"), ("bash", None)]
    assert list(commands("batchpilot ls  # runs\n# a comment\nbatchpilot \\\n  status\n")) == [
        ["batchpilot", "ls"],
        ["batchpilot", "status"],
    ]
