"""Every relative link in the documentation resolves, and README's figures come from results files.

Links: in README.md, docs/*.md, integration-plan/*.md and examples/**/README.md, each markdown link
``[text](target)`` that is not absolute (http, https, mailto) must point at an existing file or
folder; a ``#fragment`` must match a heading of the target file, slugged the way GitHub does it
(lowercase, punctuation dropped, spaces to hyphens, ``-N`` suffixes for repeated headings).

Figures: every number in README's "Results" section (integers, decimals, ratios like ``25x``)
must appear verbatim in a committed file under docs/results/ that a benchmark wrote, and each
of those files names its date and machine.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

from conftest import doc_files

REPO = Path(__file__).resolve().parent.parent
LINK_RE = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE_RE = re.compile(r"!\[[^\]]*\]\((?P<target>[^)\s]+)\)")
FENCE_RE = re.compile(r"^\s*```")
RESULTS_DIR = REPO / "docs" / "results"


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks (links in code are not links)."""
    lines, inside = [], False
    for line in path.read_text().splitlines():
        if FENCE_RE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def github_slug(heading: str) -> str:
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    for line in path.read_text().splitlines():
        anchors.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return anchors


def links_of(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path):
        targets += [m.group("target") for m in LINK_RE.finditer(line)]
        targets += [m.group("target") for m in IMAGE_RE.finditer(line)]
    return targets


DOCS = doc_files()


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in links_of(doc):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target}: {resolved} does not exist")
            continue
        if fragment and resolved.suffix == ".md" and fragment not in anchors_of(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not broken, f"{doc.relative_to(REPO)}:\n" + "\n".join(broken)


def test_github_slugs() -> None:
    assert github_slug("ADR 3: Serialization (JSON, not msgpack)") == (
        "adr-3-serialization-json-not-msgpack"
    )
    assert github_slug("Week 2 - Cluster patterns") == "week-2---cluster-patterns"


def results_section(readme: str) -> str:
    match = re.search(r"^## Results\s*$(?P<body>.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert match, "README.md has no '## Results' section"
    return match.group("body")


def figures_in(text: str) -> list[str]:
    """Numbers a reader would take as measurements: skip link targets, commands and dates."""
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}", "", text)
    return re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w.])", text)


def test_readme_results_figures_come_from_results_files() -> None:
    readme = (REPO / "README.md").read_text()
    figures = figures_in(results_section(readme))
    assert figures, "the Results section shows no figures"
    corpus = "\n".join(
        p.read_text() for p in RESULTS_DIR.glob("*") if p.suffix in (".md", ".json", ".txt")
    )
    missing = [f for f in figures if not re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", corpus)]
    assert not missing, f"figures in README's Results not found under docs/results/: {missing}"


def test_results_files_name_date_and_machine() -> None:
    files = [p for p in RESULTS_DIR.glob("*") if p.is_file() and p.suffix in (".json", ".md")]
    assert files, "docs/results/ holds no results files"
    for path in files:
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
            meta = data.get("meta", data)
            sibling = path.with_suffix(".md")
            if sibling.exists():  # the benchmark's JSON, described by its markdown record
                text = sibling.read_text()
                assert re.search(r"(?i)date", text) and re.search(r"(?i)machine", text), path
            else:
                assert "date" in meta and "machine" in meta, f"{path.name}: needs date+machine"
        else:
            assert re.search(r"(?i)date", text) and re.search(r"(?i)machine", text), path.name


def python_blocks(path: Path) -> list[tuple[int, str]]:
    blocks, lines = [], path.read_text().splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            end = index + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            blocks.append((index + 1, "\n".join(lines[index + 1 : end])))
            index = end
        index += 1
    return blocks


PY_BLOCKS = [(doc, line, code) for doc in DOCS for line, code in python_blocks(doc)]


@pytest.mark.parametrize(
    "doc, line, code", PY_BLOCKS, ids=[f"{d.relative_to(REPO)}:{n}" for d, n, _ in PY_BLOCKS]
)
def test_python_snippets_compile_and_import_real_names(doc: Path, line: int, code: str) -> None:
    """Python snippets are not run, but they must compile and import names that exist."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, f"{doc.name}:{line}", "exec", flags=flags)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


# Names of cluster_runner itself (private source) and of tools: they are not in this repository.
EXTERNAL_NAMES = {
    "NodeExecutorSSH",
    "AsyncPerfTestJournalFileWriter",
    "SSHCompletedProcess",
    "MaxSessions",
    "ZMQ_HEARTBEAT_IVL",
}
NAME_DOCS = [
    REPO / "integration-plan" / "protocol-mapping.md",
    REPO / "integration-plan" / "migration-strategy.md",
    REPO / "integration-plan" / "rollback-plan.md",
    REPO / "docs" / "architecture-decisions.md",
    REPO / "docs" / "week3-cluster-runner-integration.md",
]


def code_corpus() -> str:
    folders = ("02-cluster-patterns", "03-cluster-runner-simulation", "examples", "docker")
    files = [p for f in folders for ext in ("py", "yml") for p in (REPO / f).rglob(f"*.{ext}")]
    return "\n".join(p.read_text() for p in files)


@pytest.mark.parametrize("doc", NAME_DOCS, ids=[p.name for p in NAME_DOCS])
def test_code_names_in_the_plan_exist_in_the_code(doc: Path) -> None:
    """A backticked Python-looking name (CamelCase or snake_case with _) must be in the code."""
    corpus = code_corpus()
    names = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)(?:\(\))?`", doc.read_text()))
    looks_like_code = {n for n in names if "_" in n.strip("_") or re.match(r"[A-Z][a-z]+[A-Z]", n)}
    missing = sorted(
        n for n in looks_like_code - EXTERNAL_NAMES if not re.search(rf"\b{re.escape(n)}\b", corpus)
    )
    assert not missing, f"{doc.name} names things the code does not have: {missing}"


def test_readme_keeps_the_two_setup_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"```bash\nmake demo\nmake test\n```", readme)
