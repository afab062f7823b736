"""Week 3's experiments and exercise checks (see labs/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from cluster_runner_simulation.labs.kit import Lab, Verdicts

EXPERIMENTS: Final[dict[str, tuple[Callable[[Lab], object], str]]] = {}
EXERCISES: Final[dict[str, tuple[Callable[[Lab, Path, Verdicts], None], str, str]]] = {}
