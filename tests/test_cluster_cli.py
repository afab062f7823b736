"""Every command line of the week-2 cluster documents each flag with its default, and
argparse only builds the roles' frozen config objects."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from cluster_patterns import coordinator, defaults, worker
from cluster_patterns.client import parse_args as client_args
from cluster_patterns.coordinator import CoordinatorConfig
from cluster_patterns.worker_session import WorkerConfig

HELP = [
    ("02-cluster-patterns/coordinator.py",),
    ("02-cluster-patterns/worker.py",),
    ("02-cluster-patterns/client.py",),
    ("02-cluster-patterns/journal.py",),
    ("02-cluster-patterns/benchmark.py",),
    ("-m", "cluster_patterns.healthcheck", "tcp"),
    ("-m", "cluster_patterns.healthcheck", "http"),
    ("-m", "cluster_patterns.healthcheck", "connected"),
]


def option_entries(help_text: str) -> dict[str, str]:
    """Each ``--flag`` of an argparse --help output and the text that explains it."""
    options = help_text.split("options:", 1)[1]
    entries: dict[str, str] = {}
    current = ""
    for line in options.splitlines():
        match = re.match(r"\s{2}(-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(2)
            entries[current] = line
        elif current:
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", HELP, ids=lambda c: " ".join(c[-2:]))
def test_every_flag_has_help_and_shows_its_default(command: tuple[str, ...], run: Any) -> None:
    done = run(*command, "--help", timeout=30)
    assert done.returncode == 0, done.stderr
    entries = option_entries(done.stdout)
    entries.pop("--help")
    for flag, text in entries.items():
        shown = "(default:" in text or "(required)" in text
        assert shown, f"{' '.join(command)} {flag} shows no default: {text!r}"
        described = re.sub(r"\(default: [^)]*\)|--[\w-]+|[A-Z_]{2,}|[{}\[\],]", "", text)
        assert len(described.split()) >= 2, f"{flag} has no help text: {text!r}"


def test_the_coordinator_is_built_from_a_frozen_config_with_the_shared_defaults() -> None:
    config, keys = coordinator.parse_args([])
    assert config == CoordinatorConfig() and keys is None
    assert (config.port, config.status_port) == (defaults.TASK_PORT, defaults.STATUS_PORT)
    assert (config.heartbeat_interval_s, config.liveness) == (0.5, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_the_worker_is_built_from_a_frozen_config_with_the_shared_defaults() -> None:
    config, _ = worker.parse_args(["--id", "w1"])
    assert config == WorkerConfig("w1")
    assert config.capacity == defaults.WORKER_CAPACITY and config.port == defaults.TASK_PORT


@pytest.mark.parametrize(
    "argv",
    [
        ["--id", "x" * 129],
        ["--id", "has space"],
        ["--id", "w1", "--capacity", "513"],
        ["--id", "w1", "--heartbeat-interval", "0"],
    ],
)
def test_worker_arguments_follow_the_wire_limits(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        worker.parse_args(argv)
    assert caught.value.code == 2


def test_a_worker_id_of_128_characters_is_one_rule_with_the_wire() -> None:
    config, _ = worker.parse_args(["--id", "\U0001f600" * 128])
    assert len(config.worker_id) == 128
    routing_id = worker.routing_id(config.worker_id)
    assert len(routing_id) <= 255 and routing_id.startswith(b"worker:")
    assert worker.routing_id("w1") != worker.routing_id("w1")  # one per process


def test_client_ms_is_bounded_like_the_wire() -> None:
    args, _ = client_args(["--count", "1", "--kind", "sleep", "--ms", "600000"])
    assert args.ms == 600_000
    with pytest.raises(SystemExit):
        client_args(["--count", "1", "--kind", "sleep", "--ms", "600001"])
