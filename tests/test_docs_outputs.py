"""Sample output on the pages is produced by the commands that the pages name, and figures
quoted on the pages are found in the results files that the pages name.

Output: the line right before a fenced ``text`` block names the command that prints it:

    <!-- output-of: python 01-zmq-basics/labs.py slow-joiner -->
    ```text
    ...lines copied from that command's output, trimmed as you like...
    ```

The test runs the command (from the repository root, each command once per session) and
requires exit 0 (or N, when the marker ends in ``; exits N``), and every line of the block,
with numbers replaced by N and white space squeezed, among the lines the command printed
(as often as the block shows it). A line
that is just ``...`` marks a cut and is not compared. So a page may leave lines out but
can never show a line that the code does not print.

Figures: the line right before a table or a paragraph names the results file it quotes,
relative to the page:

    <!-- figures: results/week1-labs.md -->

and every number in that table or paragraph (up to the next blank line; not inside
backticks or link targets) must appear in that file.

Weeks 2-4 use the same two markers.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import doc_files

REPO = Path(__file__).resolve().parent.parent
OUTPUT_RE = re.compile(
    r"^\s*<!--\s*output-of:\s*(?P<command>.+?)(?:;\s*exits\s+(?P<code>\d+))?\s*-->\s*$"
)
FIGURES_RE = re.compile(r"^\s*<!--\s*figures:\s*(?P<path>\S+)\s*-->\s*$")
NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
RUN_TIMEOUT_S = 300


@dataclass
class Sample:
    page: Path
    line: int
    command: str
    lines: list[str]
    exit_code: int = 0

    @property
    def ident(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


@dataclass
class Quote:
    page: Path
    line: int
    results: Path
    text: str

    @property
    def ident(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def markers(page: Path, pattern: re.Pattern[str]) -> Iterator[tuple[int, re.Match[str], list[str]]]:
    """Every line of ``page`` that ``pattern`` matches: its index, the match, all the lines."""
    lines = page.read_text().splitlines()
    for index, line in enumerate(lines):
        marker = pattern.match(line)
        if marker:
            yield index, marker, lines


def samples_of(page: Path) -> list[Sample]:
    found = []
    for index, marker, lines in markers(page, OUTPUT_RE):
        if index + 1 >= len(lines) or lines[index + 1].strip() != "```text":
            raise ValueError(f"{page}:{index + 1}: an output-of marker must precede ```text")
        end = index + 2
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = int(marker["code"] or 0)
        found.append(Sample(page, index + 1, marker["command"], lines[index + 2 : end], code))
    return found


def quotes_of(page: Path) -> list[Quote]:
    found = []
    for index, marker, lines in markers(page, FIGURES_RE):
        end = index + 1
        while end < len(lines) and lines[end].strip():
            end += 1
        text = "\n".join(lines[index + 1 : end])
        found.append(Quote(page, index + 1, (page.parent / marker["path"]).resolve(), text))
    return found


def normal(line: str) -> str:
    return " ".join(NUMBER_RE.sub("N", line).split())


@functools.cache
def run(command: str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    if argv[0] != "python":
        raise AssertionError(f"output-of commands start with `python`: {command}")
    return subprocess.run(
        [sys.executable, "-u", *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def numbers_in(text: str) -> list[str]:
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"`[^`]*`", "", text)  # code
    text = re.sub(r"\d{4}-\d{2}-\d{2}", "", text)  # dates
    return re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w.])", text)


SAMPLES = [sample for page in doc_files() for sample in samples_of(page)]
QUOTES = [quote for page in doc_files() for quote in quotes_of(page)]


def test_normalising_keeps_words_and_drops_numbers() -> None:
    assert (
        normal("  [sink] batch 4711: 50 results in 1.06 s ") == "[sink] batch N: N results in N s"
    )
    assert normal("46,201 tasks/s") == "N tasks/s"


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.ident for s in SAMPLES])
def test_sample_output_comes_from_its_command(sample: Sample) -> None:
    done = run(sample.command)
    assert done.returncode == sample.exit_code, (
        f"{sample.ident}: `{sample.command}` exited {done.returncode}, not {sample.exit_code}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-2000:]}"
    )
    printed = Counter(normal(line) for line in (done.stdout + done.stderr).splitlines())
    shown = Counter(normal(line) for line in sample.lines if line.strip() not in ("", "..."))
    assert shown, f"{sample.ident}: the sample is empty"
    missing = shown - printed
    assert not missing, (
        f"{sample.ident}: the page shows lines that `{sample.command}` did not print"
        f" (numbers as N):\n"
        + "\n".join(f"  {line}" for line in missing)
        + "\n\nit printed:\n"
        + done.stdout[-4000:]
    )


@pytest.mark.parametrize("quote", QUOTES, ids=[q.ident for q in QUOTES])
def test_quoted_figures_are_in_the_named_results_file(quote: Quote) -> None:
    assert quote.results.is_file(), f"{quote.ident}: {quote.results} does not exist"
    corpus = quote.results.read_text()
    figures = numbers_in(quote.text)
    assert figures, f"{quote.ident}: the quote holds no figures"
    missing = [f for f in figures if not re.search(rf"(?<![\d.,]){re.escape(f)}(?![\d])", corpus)]
    assert not missing, f"{quote.ident}: not in {quote.results.name}: {missing}"
