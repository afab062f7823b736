"""How the cluster's cost grows with nodes: a benchmark (a script, not a test).

For each size (default 4, 16, 64 and 256) it starts a coordinator and that many workers, each
a real process on loopback (scale_cluster.py), then that many 03 ZeroMQ node agents next to
one private sshd (scale_agents.py), and reports per size:

  - no-op (echo) tasks/s through the coordinator, and dispatch p50/p99 (one task in flight);
  - the coordinator's CPU (% of one core) and RSS while only heartbeats flow, and the cost per
    worker from a least-squares line through the sizes;
  - SIGKILL -> "dead" on the status channel, p50/p99 over --kills kills, against the bound
    interval * (liveness + 1); dead verdicts about workers nobody killed (false verdicts);
  - warm fan-out of `true` to every node: ZeroMQ executor vs asyncssh, one connection per node;
  - (emulated) the coordinator under the heartbeats of 256 to 4,096 workers that one process
    emulates (scale_emulate.py), past what real processes allow on 2 cores.

It writes scale-bench.json, scale-bench.md and scale-bench.png into --out, and says how loaded
the machine was (load average before and after): these machines are shared.

Run it:
    python docker/simulator/scale_bench.py --quick                 # 4 and 16 nodes, a minute
    python docker/simulator/scale_bench.py --out docs/results      # the committed figures
    python docker/simulator/scale_bench.py --sizes 4,64 --parts cluster
docs/scaling.md reads the figures: what limits each curve here, and 1,000 and 10,000 nodes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import matplotlib
import zmq
from tqdm import tqdm

from cluster_patterns import defaults
from cluster_patterns.cli_args import (
    ErrorExit,
    non_negative_int,
    output_directory,
    run_interruptible,
)
from cluster_patterns.stats import percentile
from cluster_simulator.scale_agents import FanoutFigures, measure_fanout
from cluster_simulator.scale_cluster import (
    ClusterFigures,
    ClusterPlan,
    EmulatedFigures,
    measure_cluster,
    measure_emulated,
)

matplotlib.use("Agg")
from matplotlib import pyplot, ticker  # noqa: E402 - after choosing the file backend

FULL_SIZES: Final = (4, 16, 64, 256)
QUICK_SIZES: Final = (4, 16)
# Heartbeats alone from emulated workers (one process), past what real processes allow here.
FULL_EMULATED: Final = (256, 1024, 2048, 4096)
QUICK_EMULATED: Final = (256, 1024)
PARTS: Final = ("cluster", "agents", "emulated")
NAME: Final = "scale-bench"
MAX_SIZE: Final = 10_000
# The detection bound: the verdict comes `liveness` silent intervals after the last
# heartbeat, which was at most one interval before the kill.
BOUND_S: Final = defaults.HEARTBEAT_INTERVAL_S * (defaults.LIVENESS + 1)


@dataclass(frozen=True)
class Sizes:
    """How much to measure at every size."""

    idle_s: float
    tasks: int
    latency_tasks: int
    kills: int


FULL: Final = Sizes(idle_s=10.0, tasks=20_000, latency_tasks=300, kills=10)
QUICK: Final = Sizes(idle_s=3.0, tasks=2_000, latency_tasks=50, kills=4)


def sizes_list(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are numbers such as 4,16,64, not {text!r}")
    if not sizes or any(not 1 <= size <= MAX_SIZE for size in sizes):
        raise argparse.ArgumentTypeError(f"every size must be from 1 to {MAX_SIZE}, not {text!r}")
    return sizes


def parts_list(text: str) -> tuple[str, ...]:
    parts = tuple(text.split(","))
    if not parts or any(part not in PARTS for part in parts):
        raise argparse.ArgumentTypeError(f"--parts takes some of {','.join(PARTS)}, not {text!r}")
    return parts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="How the coordinator's and the agents' cost grows with the number of nodes."
    )
    parser.add_argument(
        "--quick", action="store_true", help="sizes 4,16 and short phases (default: off)"
    )
    parser.add_argument(
        "--sizes",
        type=sizes_list,
        help="comma list of sizes (default: 4,16,64,256; with --quick 4,16)",
    )
    parser.add_argument(
        "--emulated-sizes",
        type=sizes_list,
        help="comma list of emulated sizes (default: 256,1024,2048,4096; with --quick 256,1024)",
    )
    parser.add_argument(
        "--parts",
        type=parts_list,
        default=PARTS,
        help="what to measure, a comma list of cluster (real worker processes), agents "
        "(fan-out) and emulated (heartbeats of emulated workers) (default: all three)",
    )
    parser.add_argument(
        "--kills",
        type=non_negative_int,
        help=f"SIGKILLs per size, 0 for none (default: {FULL.kills}; quick {QUICK.kills})",
    )
    parser.add_argument(
        "--out",
        type=output_directory,
        default=Path("build"),
        help=f"directory for {NAME}.json, .md and .png (default: build)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar on stderr (default: off)"
    )
    return parser.parse_args(argv)


def raise_file_limit() -> None:
    """256 agents, their connections and the workers' pipes need more than 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libzmq": zmq.zmq_version(),
        "pyzmq": zmq.__version__,
    }


def per_worker_fit(
    rows: Sequence[ClusterFigures | EmulatedFigures], count: str = "workers"
) -> dict[str, float] | None:
    """Least squares: idle CPU % = base + per_worker * N."""
    if len(rows) < 2:
        return None
    xs = [float(getattr(r, count)) for r in rows]
    ys = [r.idle_cpu_percent for r in rows]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    base = mean_y - slope * mean_x
    # % of a core per worker -> CPU microseconds per worker per second, and per heartbeat
    # exchange (one HEARTBEAT in and one COORDINATOR_HEARTBEAT out per interval).
    us_per_worker_s = slope / 100 * 1e6
    beats_per_s = 1 / defaults.HEARTBEAT_INTERVAL_S
    return {
        "base_cpu_percent": round(base, 3),
        "per_worker_cpu_percent": round(slope, 5),
        "per_worker_us_per_s": round(us_per_worker_s, 1),
        "per_heartbeat_exchange_us": round(us_per_worker_s / beats_per_s, 1),
    }


def cluster_row(r: ClusterFigures) -> dict[str, Any]:
    row: dict[str, Any] = asdict(r)
    row["detection_p50_s"] = round(percentile(r.detection_s, 0.5), 3) if r.detection_s else None
    row["detection_p99_s"] = round(percentile(r.detection_s, 0.99), 3) if r.detection_s else None
    row["silence_p99_s"] = round(percentile(r.silence_s, 0.99), 3) if r.silence_s else None
    for key, value in row.items():
        if isinstance(value, float):
            row[key] = round(value, 3)
    row["start_s"] = round(r.start_s, 1)
    row["detection_s"] = [round(v, 3) for v in r.detection_s]
    row["silence_s"] = [round(v, 3) for v in r.silence_s]
    return row


def fanout_row(f: FanoutFigures) -> dict[str, Any]:
    row = {key: round(value, 3) for key, value in asdict(f).items()}
    row["nodes"] = f.nodes
    row["asyncssh_over_zmq"] = round(f.asyncssh_ms / f.zmq_ms, 2) if f.zmq_ms else None
    return row


def fit_sentence(lead: str, fit: dict[str, Any], method: str = "") -> str:
    """A per_worker_fit result in words: the idle CPU, and its cost per worker and beat."""
    return (
        f"{lead}{fit['base_cpu_percent']:.2f}% + "
        f"{fit['per_worker_cpu_percent']:.4f}% per worker{method}: "
        f"{fit['per_worker_us_per_s']:.0f} µs of CPU per worker per second, "
        f"{fit['per_heartbeat_exchange_us']:.0f} µs per heartbeat exchange."
    )


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        "# Scale benchmark: cost per node from 4 to 256",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"{meta['machine']['memory_gib']} GiB, kernel {meta['machine']['kernel']}, "
        f"Python {meta['machine']['python']}, libzmq {meta['machine']['libzmq']}",
        f"- load average (1, 5, 15 min) before: {meta['load_before']}, after: {meta['load_after']}"
        " (a shared machine: other work ran too)",
        f"- command: `{meta['command']}` ({meta['duration_s']:.0f} s)",
        f"- heartbeat interval {defaults.HEARTBEAT_INTERVAL_S} s, liveness {defaults.LIVENESS}: "
        f"a SIGKILLed worker is dead on the status channel within {BOUND_S:.2f} s",
        "",
    ]
    rows = document.get("cluster", [])
    if rows:
        lines += [
            "| workers | tasks/s | dispatch p50 / p99 ms | coordinator CPU idle | RSS MiB "
            "| kill -> dead p50 / p99 s (kills) | false dead start / idle / load | suspects |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['workers']} | {r['tasks_per_s']:.0f} | {r['dispatch_p50_ms']:.2f} / "
                f"{r['dispatch_p99_ms']:.2f} | {r['idle_cpu_percent']:.2f}% | "
                f"{r['idle_rss_mib']:.1f} | {_seconds(r['detection_p50_s'])} / "
                f"{_seconds(r['detection_p99_s'])} ({len(r['detection_s'])}) | "
                f"{r['false_dead_start']} / {r['false_dead_idle']} / {r['false_dead_load']} | "
                f"{r['false_suspect']} |"
            )
        lines += [
            "",
            "CPU in % of one core (the machine has "
            f"{meta['machine']['cpus']}), while idle and during the throughput batch:",
            "",
            "| workers | coordinator idle / load | all workers idle / load "
            "| whole machine idle / load | load average at idle |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['workers']} | {r['idle_cpu_percent']:.1f} / {r['load_cpu_percent']:.1f} "
                f"| {r['idle_workers_cpu_percent']:.1f} / {r['load_workers_cpu_percent']:.1f} "
                f"| {r['idle_machine_cpu_percent']:.1f} / {r['load_machine_cpu_percent']:.1f} "
                f"| {r['idle_load1']:.2f} |"
            )
        fit = document.get("per_worker")
        if fit:
            lines += ["", fit_sentence("Idle coordinator CPU = ", fit, " (least squares)")]
    emulated = document.get("emulated", [])
    if emulated:
        lines += [
            "",
            "Heartbeats alone, from emulated workers (one process speaks the workers' side of "
            "the protocol for every id: real processes saturate these 2 cores first):",
            "",
            "| emulated workers | registered | refused | coordinator CPU idle | RSS MiB "
            "| STATUS frame KiB | false dead registering / idle | suspects "
            "| emulator late beats / worst lag ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for e in emulated:
            lines.append(
                f"| {e['workers']} | {e['registered']} | {e['refused']} | "
                f"{e['idle_cpu_percent']:.2f}% | {e['idle_rss_mib']:.1f} | {e['status_kib']:.0f} "
                f"| {e['false_dead_start']} / {e['false_dead']} | {e['false_suspect']} | "
                f"{e['late_heartbeats']} / "
                f"{e['max_lag_ms']} |"
            )
        fit = document.get("per_emulated_worker")
        if fit:
            lines += ["", fit_sentence("Emulated, every worker registered: ", fit)]
    fans = document.get("agents", [])
    if fans:
        lines += [
            "",
            "| nodes | warm fan-out of `true`, ZeroMQ ms | asyncssh ms | asyncssh / ZeroMQ "
            "| first fan-out (connect) ZeroMQ / asyncssh s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for f in fans:
            lines.append(
                f"| {f['nodes']} | {f['zmq_ms']:.1f} | {f['asyncssh_ms']:.1f} | "
                f"{f['asyncssh_over_zmq']:.2f} | {f['zmq_connect_s']:.2f} / "
                f"{f['asyncssh_connect_s']:.2f} |"
            )
    lines += ["", f"![cost per node]({NAME}.png)", ""]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def plot(document: dict[str, Any], path: Path) -> None:
    figure, axes = pyplot.subplots(2, 3, figsize=(15, 8))
    rows, fans = document.get("cluster", []), document.get("agents", [])
    emulated = document.get("emulated", [])
    cpu, tps, det = axes[0]
    fan, emu, rss = axes[1]
    if rows:
        ns = [r["workers"] for r in rows]
        cpu.plot(ns, [r["idle_cpu_percent"] for r in rows], "o-", label="measured")
        fit = document.get("per_worker")
        if fit:
            line = [fit["base_cpu_percent"] + fit["per_worker_cpu_percent"] * n for n in ns]
            cpu.plot(ns, line, "--", label="least squares")
        cpu.legend()
        tps.plot(ns, [r["tasks_per_s"] for r in rows], "o-")
        det.plot(ns, [r["detection_p50_s"] for r in rows], "o-", label="p50")
        det.plot(ns, [r["detection_p99_s"] for r in rows], "s-", label="p99")
        bound = det.axhline(BOUND_S, color="grey", linestyle=":", label=f"bound {BOUND_S:.1f} s")
        bound.set_gid("bound")  # not a series: its x data are axes fractions
        det.set(ylim=(0, None))
        det.legend()
        rss.plot(ns, [r["idle_rss_mib"] for r in rows], "o-", label="worker processes")
    if fans:
        nodes = [f["nodes"] for f in fans]
        fan.plot(nodes, [f["zmq_ms"] for f in fans], "o-", label="ZeroMQ executor")
        fan.plot(nodes, [f["asyncssh_ms"] for f in fans], "s-", label="asyncssh")
        fan.set(yscale="log")
        fan.legend()
    if emulated:
        full = [e for e in emulated if e["registered"] == e["workers"]]
        emu.plot([e["workers"] for e in full], [e["idle_cpu_percent"] for e in full], "o-")
        rss.plot(
            [e["workers"] for e in emulated],
            [e["idle_rss_mib"] for e in emulated],
            "s-",
            label="emulated workers",
        )
        rss.legend()
    titles = [
        (cpu, "Idle coordinator CPU, worker processes", "% of one core", "linear"),
        (tps, "No-op tasks/s through the coordinator", "tasks/s", "log"),
        (det, "SIGKILL -> dead on the status channel", "s", "log"),
        (fan, "Warm fan-out of `true`", "ms", "log"),
        (emu, "Idle coordinator CPU, emulated workers", "% of one core", "linear"),
        (rss, "Coordinator RSS", "MiB", "log"),
    ]
    for axis, title, unit, xscale in titles:
        series = [line for line in axis.get_lines() if line.get_gid() != "bound"]
        sizes = sorted({int(x) for line in series for x in line.get_xdata()})
        axis.set(title=title, ylabel=unit, xscale=xscale, xlabel="workers / nodes")
        if sizes:
            axis.set_xticks(sizes, [str(size) for size in sizes])
            axis.xaxis.set_minor_locator(ticker.NullLocator())
        axis.grid(True, alpha=0.3)
    figure.suptitle(f"{document['meta']['date'][:10]}, {document['meta']['machine']['cpus']} CPUs")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    pyplot.close(figure)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    amounts = QUICK if args.quick else FULL
    kills = args.kills if args.kills is not None else amounts.kills
    emulated = args.emulated_sizes or (QUICK_EMULATED if args.quick else FULL_EMULATED)
    steps = len(sizes) * (4 * ("cluster" in args.parts) + ("agents" in args.parts))
    steps += len(emulated) * ("emulated" in args.parts)
    document: dict[str, Any] = {"cluster": [], "agents": [], "emulated": []}
    # On stderr, and off by itself when stderr is not a terminal (or with --no-progress).
    bar = tqdm(total=steps, file=sys.stderr, disable=True if args.no_progress else None)

    def phase(text: str) -> None:
        bar.set_description_str(text)
        bar.update()

    def log(text: str) -> None:
        bar.write(text, file=sys.stderr)

    with bar:
        cluster_rows: list[ClusterFigures] = []
        for size in sizes:
            if "cluster" in args.parts:
                plan = ClusterPlan(
                    size, amounts.idle_s, amounts.tasks, amounts.latency_tasks, kills
                )
                figures = measure_cluster(plan, phase)
                cluster_rows.append(figures)
                document["cluster"].append(cluster_row(figures))
                log(_cluster_line(document["cluster"][-1]))
            if "agents" in args.parts:
                phase(f"{size} agents and {size} SSH connections: fan-out")
                fanout = fanout_row(measure_fanout(size))
                document["agents"].append(fanout)
                log(
                    f"{size} nodes: fan-out ZeroMQ {fanout['zmq_ms']:.1f} ms, "
                    f"asyncssh {fanout['asyncssh_ms']:.1f} ms"
                )
        document["per_worker"] = per_worker_fit(cluster_rows)
        emulated_rows = []
        for size in emulated if "emulated" in args.parts else ():
            row = measure_emulated(size, amounts.idle_s, phase)
            emulated_rows.append(row)
            document["emulated"].append(_rounded(asdict(row)))
            log(
                f"{size} emulated workers: {row.registered} registered, coordinator "
                f"{row.idle_cpu_percent:.1f}% ({row.idle_rss_mib:.0f} MiB), STATUS "
                f"{row.status_kib:.0f} KiB, false dead {row.false_dead}"
            )
        document["per_emulated_worker"] = per_worker_fit(
            [r for r in emulated_rows if r.registered == r.workers], "workers"
        )
    return document


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()
    }


def _cluster_line(r: dict[str, Any]) -> str:
    return (
        f"{r['workers']} workers: {r['tasks_per_s']:.0f} tasks/s, idle coordinator "
        f"{r['idle_cpu_percent']:.2f}% ({r['idle_rss_mib']:.0f} MiB), kill -> dead p99 "
        f"{_seconds(r['detection_p99_s'])} s, false dead {r['false_dead_idle']}/"
        f"{r['false_dead_load']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_file_limit()
    started = time.monotonic()
    load_before = [round(v, 2) for v in os.getloadavg()]
    stopped = "; everything it started is stopped"
    return run_interruptible(
        "scale-bench",
        lambda: measure_and_write(args, started, load_before),
        [ErrorExit(RuntimeError, 1)],
        note=stopped,
    )


def measure_and_write(args: argparse.Namespace, started: float, load_before: list[float]) -> int:
    document = run(args)
    document["meta"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "command": " ".join(["python", "docker/simulator/scale_bench.py", *sys.argv[1:]]),
        "duration_s": round(time.monotonic() - started, 1),
        "bound_s": BOUND_S,
        "percentile": "nearest rank (cluster_patterns.stats.percentile)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(document, indent=2) + "\n")
    report = markdown(document)
    (args.out / f"{NAME}.md").write_text(report)
    plot(document, args.out / f"{NAME}.png")
    print(report)
    print(f"wrote {args.out / NAME}.json, .md and .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
