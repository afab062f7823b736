"""The Guide map in docs/learning-notes.md: every row points at a lesson that exists (and so
runs: tests/test_lessons_*.py run every lesson), or says plainly why there is none; and every
lesson appears in the map."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTES = REPO / "docs" / "learning-notes.md"
LESSON_FILES = sorted(
    [p for p in (REPO / "01-zmq-basics").glob("*.py") if p.name != "labs.py"]
    + [
        p
        for p in (REPO / "02-cluster-patterns" / "reliability").glob("*.py")
        if p.stem != "__init__"
    ]
)


def map_rows() -> list[list[str]]:
    text = NOTES.read_text()
    section = re.search(r"^## ZeroMQ Guide chapters 1-4.*?$(.*?)^## ", text, re.M | re.S)
    assert section, "learning-notes.md has no Guide map section"
    rows = []
    for line in section.group(1).splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-+", line) and "Concept" not in line:
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def lessons_named(cell: str) -> set[str]:
    return set(re.findall(r"([a-z_]+\.py)", cell))


def test_every_row_points_at_a_lesson_or_says_why_not() -> None:
    names = {p.name for p in LESSON_FILES}
    problems = []
    rows = map_rows()
    assert len(rows) >= 30, f"the map has only {len(rows)} rows"
    for guide, concept, lesson, *_ in rows:
        if lesson.lower().startswith("none"):
            if not re.match(r"none( in 01)?(:| \()", lesson) or len(lesson) < 25:
                problems.append(f"{concept}: 'none' needs a reason: {lesson!r}")
            continue
        named = lessons_named(lesson)
        lesson_named = named & names
        exercise = "exercise" in lesson and "solutions/" in lesson
        if not lesson_named and not exercise:
            problems.append(f"{concept}: names no lesson file ({lesson!r})")
        for target in re.findall(r"\]\(([^)]+)\)", lesson):
            if not (NOTES.parent / target).resolve().exists():
                problems.append(f"{concept}: link {target} does not exist")
    assert not problems, "\n".join(problems)


def test_every_lesson_is_in_the_map() -> None:
    text = "\n".join(" ".join(row) for row in map_rows())
    missing = [p.name for p in LESSON_FILES if p.name not in text]
    assert not missing, f"lessons missing from the Guide map: {missing}"
