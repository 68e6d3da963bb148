"""The documentation's code, run as printed: every page of ``docs/`` and the README.

A fenced ``python`` block is a complete program: the blocks of one page run one after
another, each in a fresh interpreter, in one temporary working directory (so a later
block may read what an earlier one wrote, as a reader following the page would). A
block that cannot run as printed (it needs a cloud bucket, a cluster, an SDK's runtime)
is fenced ``python fragment`` on purpose. Shell blocks (``bash``, ``sh``) are not run,
but every ``asynccp ...`` command in them must parse."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import asynccp
from asynccp.cli._parser import build_parser

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def pages() -> list[Path]:
    """The README and every page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    heading: str  # the heading it follows
    info: str  # the fence's info string: "python", "python fragment", "bash"...
    code: str
    line: int  # where its fence opens (1-based)

    @property
    def where(self) -> str:
        return f"{page_id(self.page)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced code block of ``page``, in order. Fences open at the start of a line:
    an indented one (in a list item) would be rendered but never found, so it fails."""
    found: list[Block] = []
    heading, fence, code = "", None, []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if fence is None and line.lstrip().startswith("```"):
            assert line.startswith("```"), f"{page_id(page)}:{n}: an indented code fence"
            fence, code = (line[3:].strip(), n), []
        elif fence is not None and line.startswith("```"):
            found.append(Block(page, heading, fence[0], "\n".join(code) + "\n", fence[1]))
            fence = None
        elif fence is not None:
            code.append(line)
        elif line.startswith("#"):
            heading = line
    assert fence is None, f"{page_id(page)}: the code block at line {fence[1]} is never closed"
    return found


def block_after(page: Path, heading: str) -> Block:
    """The first complete ``python`` block after the heading that starts with ``heading``."""
    for block in blocks(page):
        if block.info == "python" and block.heading.lstrip("# ").startswith(heading):
            return block
    raise AssertionError(f"{page_id(page)}: no python block after {heading!r}")


#: The fence info strings a page may use.
INFOS = {"python", "python fragment", "bash", "sh", "yaml", "text", ""}

#: Complete python blocks the sequential run leaves out (by page and heading), and why.
NOT_RUN_IN_SEQUENCE = {
    ("docs/training-state.md", "## A training loop with torch"): (
        "10,000 torch steps as printed; test_training_state_example_saves_and_resumes runs "
        "it, as printed but for the step count"
    ),
}

#: What a block may need, and the module that says it is there.
NEEDS = {
    "from flytekit import": "flytekit",
    "import torch": "torch",
    "numpy": "numpy",
    "starlette": "starlette",
}

#: Pages whose blocks take more than a second or so in all: run with the slow tests.
SLOW_PAGES = {"README.md", "docs/getting-started.md"}


def run_page(page: Path, tmp_path: Path) -> list[Block]:
    """Run the complete python blocks of ``page`` one after another in ``tmp_path``."""
    ran = []
    for block in blocks(page):
        if block.info != "python":
            continue
        if (page_id(page), block.heading) in NOT_RUN_IN_SEQUENCE:
            continue
        for marker, module in NEEDS.items():
            if marker in block.code and importlib.util.find_spec(module) is None:
                pytest.skip(f"{block.where} needs {module}")
        script = tmp_path / f"block_{block.line}.py"
        script.write_text(block.code)
        proc = subprocess.run(
            [sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{block.where} ({block.heading}):\n{proc.stderr}"
        ran.append(block)
    return ran


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, id=page_id(p), marks=[pytest.mark.slow] if page_id(p) in SLOW_PAGES else [])
        for p in pages()
    ],
)
def test_python_blocks_run_one_after_another_as_printed(page: Path, tmp_path: Path) -> None:
    """Every complete ``python`` block of the page, run as printed, one after another in
    one working directory."""
    ran = run_page(page, tmp_path)
    if page == README or page == DOCS / "getting-started.md":
        # the first example leaves the newest keep=3 of its 100 steps
        assert ran and ran[0].heading.endswith("xample")
        manifests = sorted(p.name for p in (tmp_path / "checkpoints/example/manifests").iterdir())
        assert manifests == [f"{step:020d}.json" for step in (97, 98, 99)]


def test_every_block_is_complete_or_a_fragment_on_purpose() -> None:
    """Fences say what they hold: a ``python`` block runs, ``python fragment`` does not;
    nothing else (``py``, ``python3``, ``pycon``) slips past the runner unseen."""
    bad = [(b.where, b.info) for p in pages() for b in blocks(p) if b.info not in INFOS]
    assert not bad, bad
    assert {(p, h) for p, h in NOT_RUN_IN_SEQUENCE} <= {
        (page_id(b.page), b.heading) for p in pages() for b in blocks(p) if b.info == "python"
    }


def test_python_blocks_use_locations_of_their_own() -> None:
    """A location a block writes to (a URL, or a folder under ``checkpoints/``) appears in
    blocks of one page only, in one block unless the page reads back what it wrote: no
    example resumes from another page's checkpoints or trips on their steps."""
    owners: dict[str, set[str]] = {}
    for page in pages():
        for block in blocks(page):
            if block.info.split()[:1] == ["python"]:
                for loc in re.findall(r"[\"']((?:\w+://|checkpoints/)[^\"']*)[\"']", block.code):
                    if not loc.endswith("..."):  # a placeholder ("s3://..."), not a place
                        owners.setdefault(loc, set()).add(page_id(page))
    assert "checkpoints/example" in owners
    shared = {loc: where for loc, where in owners.items() if len(where) > 1}
    assert shared.keys() <= {"checkpoints/example"}, shared  # README and Getting started
    assert owners["checkpoints/example"] == {"README.md", "docs/getting-started.md"}


def asynccp_commands(block: Block) -> list[list[str]]:
    """The ``asynccp ...`` commands of a shell block, as argument lists."""
    commands = []
    for line in block.code.splitlines():
        for part in re.split(r"&&|;|\|", line.split(" #")[0]):
            words = shlex.split(part)
            if words[:1] == ["asynccp"]:
                commands.append(words[1:])
    return commands


def test_asynccp_commands_in_shell_blocks_parse() -> None:
    """Every ``asynccp ...`` line of a shell block is a command the parser accepts."""
    parser = build_parser()
    seen = 0
    for page in pages():
        for block in blocks(page):
            if block.info in ("bash", "sh"):
                for args in asynccp_commands(block):
                    try:
                        parser.parse_args(args)
                    except SystemExit:
                        pytest.fail(f"{block.where}: asynccp {shlex.join(args)} does not parse")
                    seen += 1
    assert seen >= 10


def test_readme_links_into_the_docs_exist() -> None:
    """The README's relative links (into ``docs/``, to CONTRIBUTING, benchmarks) resolve."""
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_stays_short() -> None:
    """The README is the front door (issue 17): the details live in docs/."""
    assert len(README.read_text().splitlines()) <= 300


def test_api_reference_documents_every_public_name() -> None:
    """docs/api.md renders ``asynccp`` with exactly its public names."""
    text = (DOCS / "api.md").read_text()
    assert "::: asynccp\n" in text
    listed = set(re.findall(r"^\s+- (\w+)$", text, re.M))
    assert listed == set(asynccp.__all__)


def test_every_page_is_in_the_nav() -> None:
    """mkdocs.yml's nav names every page of docs/ (mkdocs only mentions one left out)."""
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [page_id(p) for p in DOCS.rglob("*.md") if f" {p.relative_to(DOCS)}" not in nav]
    assert not missing, missing


def test_ci_builds_the_docs_and_runs_the_readme_test_command() -> None:
    """.ci/run builds the site strictly (outside the repo) and runs the README's tests."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict --site-dir" in ci
    assert "python -m pytest" in README.read_text() and "\npython -m pytest\n" in ci


@pytest.mark.slow
def test_training_state_example_saves_and_resumes(tmp_path: Path) -> None:
    """The training loop of docs/training-state.md, as printed (but for its step count),
    in a fresh working directory: the first run saves steps 0, 100, 200 to
    ``checkpoints/training_state``; the second resumes from 200 through ``read_state``
    (model, AdamW state with its int keys, RNG state) and saves 300 and 400."""
    pytest.importorskip("torch")
    code = block_after(DOCS / "training-state.md", "A training loop with torch").code
    location = '"checkpoints/training_state"'
    assert location in code and "steps: int = 10_000" in code
    run_dir = tmp_path / "checkpoints" / "training_state"
    code = code.replace("anyio.run(train)", "import sys\nanyio.run(train, int(sys.argv[1]))")
    script = tmp_path / "train.py"
    script.write_text(code)
    check = (
        "import anyio, asynccp, sys\n"
        "async def main():\n"
        f"    async with asynccp.Checkpointer({str(run_dir)!r}) as cp:\n"
        "        c = await cp.latest()\n"
        "        s = await c.read_state(framework='torch')\n"
        "        steps = [x.step for x in await cp.list()]\n"
        "        print(steps, s['step'], sorted(s['optim']['state'])[:2])\n"
        "anyio.run(main)\n"
    )
    for steps, expected in ((250, "[0, 100, 200] 200 [0, 1]"), (450, "[200, 300, 400] 400 [0, 1]")):
        proc = subprocess.run(
            [sys.executable, str(script), str(steps)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        got = subprocess.run(
            [sys.executable, "-c", check], capture_output=True, text=True, timeout=120
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == expected
