"""Code on the course pages is copied from the source, and a test keeps the two the same.

In a Python file, a region is marked with two comment lines (any indentation; regions may
nest, and marker lines inside a region are left out of it):

    # --8<-- [start:server-loop]
    ...
    # --8<-- [end:server-loop]

On a page (README.md, docs/*.md, integration-plan/*.md, examples/**/README.md), the line
right before a fenced python block names the region it shows:

    <!-- excerpt: 01-zmq-basics/req_rep.py:server-loop -->
    ```python
    ...the region, dedented...
    ```

The block must equal the region, dedented, exactly. After changing a lesson, refresh every
excerpt of a page with:

    python tests/test_docs_excerpts.py --update docs/week1-zmq-basics.md

The same mechanism serves every page: weeks 2-4 mark their regions and blocks the same way.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC_GLOBS = ["README.md", "docs/*.md", "integration-plan/*.md", "examples/**/README.md"]
SOURCE_GLOBS = [
    "01-zmq-basics/*.py",
    "02-cluster-patterns/**/*.py",
    "03-cluster-runner-simulation/*.py",
    "docker/simulator/*.py",
    "docs/solutions/**/*.py",
    "examples/**/*.py",
]
MARK_RE = re.compile(r"^\s*# --8<-- \[(?P<kind>start|end):(?P<name>[\w.-]+)\]\s*$")
EXCERPT_RE = re.compile(r"^\s*<!--\s*excerpt:\s*(?P<path>[^\s:]+):(?P<name>[\w.-]+)\s*-->\s*$")
# Pages that teach code, and how many excerpts each shows at least.
TEACHING_PAGES = {
    "docs/week1-zmq-basics.md": 12,
    "docs/reliability-patterns.md": 6,
    "docs/week2-cluster-patterns.md": 20,
    "docs/week3-cluster-runner-integration.md": 12,
    "docs/week4-integration-planning.md": 12,
}


@dataclass
class Excerpt:
    page: Path
    line: int  # of the marker comment, 1-based
    source: str
    name: str
    body: str  # what the page shows
    body_start: int  # index of the first body line in the page's lines
    body_end: int  # index of the closing fence

    @property
    def ident(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line} ({self.source}:{self.name})"


def regions(path: Path) -> dict[str, str]:
    """Every marked region of a source file, dedented; raises ValueError on bad markers."""
    open_at: dict[str, int] = {}
    found: dict[str, list[str]] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        mark = MARK_RE.match(line)
        if not mark:
            for name in open_at:
                found[name].append(line)
            continue
        name = mark["name"]
        if mark["kind"] == "start":
            if name in open_at or name in found:
                raise ValueError(f"{path}:{number}: region {name!r} starts twice")
            open_at[name], found[name] = number, []
        else:
            if name not in open_at:
                raise ValueError(f"{path}:{number}: region {name!r} ends but never started")
            del open_at[name]
    if open_at:
        raise ValueError(f"{path}: region(s) never ended: {', '.join(open_at)}")
    return {name: textwrap.dedent("\n".join(body)).strip("\n") for name, body in found.items()}


def excerpts_of(page: Path) -> list[Excerpt]:
    lines = page.read_text().splitlines()
    found = []
    for index, line in enumerate(lines):
        marker = EXCERPT_RE.match(line)
        if not marker:
            continue
        fence = index + 1
        if fence >= len(lines) or lines[fence].strip() != "```python":
            raise ValueError(f"{page}:{index + 1}: an excerpt marker must precede ```python")
        end = fence + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "\n".join(lines[fence + 1 : end])
        found.append(Excerpt(page, index + 1, marker["path"], marker["name"], body, fence + 1, end))
    return found


def doc_files() -> list[Path]:
    found: set[Path] = set()
    for pattern in DOC_GLOBS:
        found.update(p for p in REPO.glob(pattern) if ".venv" not in p.parts)
    return sorted(found)


def source_files() -> list[Path]:
    found: set[Path] = set()
    for pattern in SOURCE_GLOBS:
        found.update(p for p in REPO.glob(pattern) if ".venv" not in p.parts)
    return sorted(found)


def expected_body(excerpt: Excerpt) -> str:
    source = REPO / excerpt.source
    if not source.is_file():
        raise AssertionError(f"{excerpt.ident}: {excerpt.source} does not exist")
    found = regions(source)
    if excerpt.name not in found:
        raise AssertionError(
            f"{excerpt.ident}: {excerpt.source} has no region {excerpt.name!r}"
            f" (it has: {', '.join(sorted(found)) or 'none'})"
        )
    return found[excerpt.name]


ALL_EXCERPTS = [excerpt for page in doc_files() for excerpt in excerpts_of(page)]


def test_every_source_file_has_well_formed_markers() -> None:
    problems = []
    for path in source_files():
        try:
            regions(path)
        except ValueError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("excerpt", ALL_EXCERPTS, ids=[e.ident for e in ALL_EXCERPTS])
def test_excerpt_matches_its_source(excerpt: Excerpt) -> None:
    expected = expected_body(excerpt)
    if excerpt.body != expected:
        import difflib

        diff = "\n".join(
            difflib.unified_diff(
                expected.splitlines(), excerpt.body.splitlines(), "source", "page", lineterm=""
            )
        )
        raise AssertionError(
            f"{excerpt.ident} differs from its source; refresh it with\n"
            f"  python tests/test_docs_excerpts.py --update {excerpt.page.relative_to(REPO)}\n"
            f"{diff}"
        )


@pytest.mark.parametrize("page, minimum", sorted(TEACHING_PAGES.items()))
def test_teaching_pages_show_code(page: str, minimum: int) -> None:
    shown = [e for e in ALL_EXCERPTS if e.page == REPO / page]
    assert len(shown) >= minimum, f"{page} shows {len(shown)} excerpts, wants {minimum}+"


def test_lesson_regions_are_short_enough_to_explain() -> None:
    """A page explains an excerpt line by line: more than 40 lines is a chapter, not an excerpt."""
    long = [
        f"{e.ident}: {len(expected_body(e).splitlines())} lines"
        for e in ALL_EXCERPTS
        if len(expected_body(e).splitlines()) > 40
    ]
    assert not long, "\n".join(long)


def update(page: Path) -> int:
    """Rewrite every excerpt block of `page` from its source; return how many changed."""
    lines = page.read_text().splitlines()
    changed = 0
    for excerpt in reversed(excerpts_of(page)):
        body = expected_body(excerpt)
        if body != excerpt.body:
            lines[excerpt.body_start : excerpt.body_end] = body.splitlines()
            changed += 1
    page.write_text("\n".join(lines) + "\n")
    return changed


def line_count_claims(page: Path) -> list[tuple[str, int]]:
    """(file, lines) from every table row of `page` whose table has a "Lines" column."""
    claims: list[tuple[str, int]] = []
    column = -1
    for line in page.read_text().splitlines():
        if not line.startswith("|"):
            column = -1
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if "Lines" in cells:
            column = cells.index("Lines")
            continue
        link = re.search(r"\]\(([^)]+\.py)\)", line)
        if column >= 0 and link and cells[column].isdigit():
            claims.append(((page.parent / link.group(1)).resolve().as_posix(), int(cells[column])))
    return claims


@pytest.mark.parametrize("page", sorted(TEACHING_PAGES))
def test_quoted_line_counts_are_true(page: str) -> None:
    claims = line_count_claims(REPO / page)
    assert claims, f"{page} quotes no line counts"
    wrong = [
        f"{Path(path).name}: the page says {lines}, the file has {actual}"
        for path, lines in claims
        if (actual := len(Path(path).read_text().splitlines())) != lines
    ]
    assert not wrong, "\n".join(wrong)


def update_line_counts(page: Path) -> int:
    """Rewrite every "Lines" cell of `page` that no longer matches its file; return how many."""
    lines = page.read_text().splitlines()
    column, changed = -1, 0
    for number, line in enumerate(lines):
        if not line.startswith("|"):
            column = -1
            continue
        cells = line.strip().strip("|").split("|")
        if "Lines" in (stripped := [cell.strip() for cell in cells]):
            column = stripped.index("Lines")
            continue
        link = re.search(r"\]\(([^)]+\.py)\)", line)
        if column < 0 or not link or not stripped[column].isdigit():
            continue
        actual = str(len((page.parent / link.group(1)).read_text().splitlines()))
        if actual != stripped[column]:
            cells[column] = cells[column].replace(stripped[column], actual)
            lines[number] = "|" + "|".join(cells) + "|"
            changed += 1
    page.write_text("\n".join(lines) + "\n")
    return changed


if __name__ == "__main__":
    # Refresh a page after its sources changed: excerpts and "Lines" cells from the files.
    if len(sys.argv) >= 3 and sys.argv[1] == "--update":
        for name in sys.argv[2:]:
            page_path = Path(name).resolve()
            excerpts, counts = update(page_path), update_line_counts(page_path)
            print(f"{name}: {excerpts} excerpt(s), {counts} line count(s) refreshed")
        sys.exit(0)
    print(f"usage: {sys.argv[0]} --update PAGE.md...", file=sys.stderr)
    sys.exit(2)
