#!/usr/bin/env bash
#
# simulate-cluster.sh - run the 02 cluster (coordinator, workers, monitor) and break it on purpose.
#
# This is the command users type; the simulator itself is a Python program, docker/simulator/
# (importable as cluster_simulator). This wrapper finds the Python and execs the program, so
# every command, flag and exit code is the program's:
#
#   ./docker/simulate-cluster.sh help            every command, option and variable
#   ./docker/simulate-cluster.sh start -h        one command's own flags, with defaults
#
# Python: $PYTHON if set, else the repository's .venv, else python3 on PATH; it must have the
# project installed (`make venv`, or `pip install -r requirements.txt`).
# Exit codes: the program's (0 ok, 1 failed, 2 bad input, 3 a port is taken, 130 Ctrl-C);
# 1 here when no Python with the project installed is found.
# Details: docs/cluster-simulation.md.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT

err() { printf 'simulate-cluster: %s\n' "$*" >&2 2>/dev/null || true; }

usage() {
  cat <<EOF
Usage: $(basename "$0") [--local|--docker] [-p PROJECT] COMMAND [ARGS]

Runs the 02 cluster as containers (docker) or processes (local) and injects faults.
The commands are listed by \`$(basename "$0") help\`, which needs a Python with this
project installed: run \`make venv\` (or pip install -r requirements.txt) first.
EOF
}

# The interpreter that runs the simulator (and, for the local backend, the cluster).
find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    printf '%s\n' "${PYTHON}"
  elif [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    printf '%s\n' "${REPO_ROOT}/.venv/bin/python"
  else
    command -v python3 || true
  fi
}

main() {
  local python
  python="$(find_python)"
  if [[ -z "${python}" ]] || ! "${python}" -c 'import cluster_simulator' 2>/dev/null; then
    usage >&2 2>/dev/null || true
    err "no Python with this project installed (tried: ${python:-python3})"
    exit 1
  fi
  export SIMULATE_CLUSTER_PROG="$0"
  # Ctrl-C is ignored until the program has installed its own handler, its first step: a
  # Ctrl-C while Python starts up cannot end it with a traceback.
  trap '' INT
  exec "${python}" -m cluster_simulator "$@"
}

main "$@"
