#!/usr/bin/env bash
#
# simulate-cluster.sh - run the 02 cluster (coordinator, workers, monitor) and break it on purpose.
#
# Two backends run the same commands:
#   docker  one container per node (docker/docker-compose.yml); Compose v2 or v1.29
#   local   one process per node, pid and log files under .cluster-state/local-PROJECT/;
#           as root every worker gets its own network namespace, so `partition` is real
# The backend is Docker when an engine answers, else local; --local, --docker or
# CLUSTER_BACKEND=local|docker choose explicitly. Run `simulate-cluster.sh help` for commands.
#
# Environment: COMPOSE_PROJECT_NAME (or -p NAME; default zmqsim), MONITOR_PORT (5572),
# COORDINATOR_PORT (5570) and STATUS_PORT (5571) for the local backend, HEARTBEAT_INTERVAL
# (0.5 s), LIVENESS (3), CLUSTER_STATE_DIR (.cluster-state), PYTHON, DEMO_SECONDS.
#
# Exit codes: 0 ok, 1 the operation failed (or `test` found a violation), 2 bad input,
# 3 a port the cluster needs is taken (the message names it and its holder), 130 interrupted
# (Ctrl-C; the demo's own end on Ctrl-C is 0). Whatever ends a start, or the demo, stops what
# it started, through a closed stdout and a second Ctrl-C alike.

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly COMPOSE_FILE="${SCRIPT_DIR}/docker-compose.yml"
readonly CTL="${SCRIPT_DIR}/cluster_ctl.py"
readonly RELAY="${SCRIPT_DIR}/ns_relay.py"
readonly MAX_WORKERS=9
readonly DEFAULT_WORKERS=3
readonly BASE_WORKERS_IN_COMPOSE=3
readonly START_TIMEOUT_S=90

PROJECT="${COMPOSE_PROJECT_NAME:-zmqsim}"
BACKEND="${CLUSTER_BACKEND:-auto}"
STATE_ROOT="${CLUSTER_STATE_DIR:-${REPO_ROOT}/.cluster-state}"
HEARTBEAT_INTERVAL="${HEARTBEAT_INTERVAL:-0.5}"
LIVENESS="${LIVENESS:-3}"
WAIT_FOR_VERDICT=1
DEMO_STOP=0
COMPOSE=()
PY=""

#######################################
# Messages and exits. A closed stdout or stderr (the pipe to a `tee` that Ctrl-C killed) must
# not end the script before it has stopped what it started: main traps SIGPIPE, so a write
# only fails, and the dead stream is swapped for /dev/null so that no later command hits it.
#######################################
info() { printf '%s\n' "$*" 2>/dev/null || exec >/dev/null; }
err() { printf 'simulate-cluster: %s\n' "$*" >&2 2>/dev/null || exec 2>/dev/null; }
die() {
  err "$*"
  exit 1
}
# Bad input: a clear message and exit code 2.
die_usage() {
  err "$*"
  exit 2
}

#######################################
# Undo on every exit. While a run holds nodes it must not leave behind (a start that has not
# finished, the demo's own cluster), UNDO names the function that stops them, and on_exit runs
# it however the script ends: an error, Ctrl-C, SIGTERM, a hang-up.
#######################################
UNDO=""
# What UNDO becomes once a start has succeeded: nothing for `start` (the cluster stays up),
# cmd_stop for the demo, which stops the cluster it started however it ends.
UNDO_ONCE_STARTED=""

# Once a stop has begun it runs to the end: a second Ctrl-C is ignored, by this shell and by
# every command it starts from now on (they inherit the ignored signals).
ignore_interrupts() { trap '' INT TERM HUP; }

run_undo() {
  local undo="${UNDO}"
  UNDO=""
  [[ -n "${undo}" ]] || return 0
  ignore_interrupts
  "${undo}"
}

on_exit() {
  local status=$?
  if [[ -n "${UNDO}" ]]; then
    err "stopping what this run started (cluster '${PROJECT}')"
    run_undo || status=1
  fi
  exit "${status}"
}

usage() {
  cat <<EOF
Usage: $(basename "$0") [--local|--docker] [-p PROJECT] COMMAND [ARGS]

Cluster management
  build                  build the node image (docker); check the Python setup (local)
  start [--workers N]    start coordinator, N workers (default ${DEFAULT_WORKERS}, max ${MAX_WORKERS}) and monitor
  stop                   stop every node (the image stays, so start is quick)
  status                 each node's container/process state next to the monitor's view
  cleanup                stop, then remove containers, networks, volumes, project images,
                         namespaces and state files (the python:3.11-slim base image stays)
  logs [SERVICE] [-f]    show logs of every node or of one (coordinator, workerN, monitor)

Testing
  test [--tasks N] [--json PATH]
                         >= 200 tasks during baseline, fail worker1, recover worker1,
                         partition worker2 and heal worker2; checks invariants after each
                         step and prints the figures table; exits 1 on any violation
  workload [--count N] [--kind echo|sleep|cpu|fail] [--ms MS] [--json PATH]
                         submit tasks with client.py from inside the cluster
  demo                   start, submit work, print the dashboard URL, stop on Ctrl-C
                         (DEMO_SECONDS=N stops after N seconds)
  compare [--smoke|--quick|--full] [--executors LIST] [--json PATH]
                         docker: run 03 performance_comparison.py --descriptor from the
                         coordinator container against every worker's ZeroMQ node agent
                         and sshd (default --quick); prints its markdown table

Failure simulation (fail/recover/partition/heal wait for the monitor's verdict; --no-wait skips)
  fail NODE              kill the node with SIGKILL
  recover NODE           start a failed node again
  partition NODE         cut the node off the cluster network
  heal NODE              reconnect a partitioned node
  pause NODE | resume NODE       freeze (SIGSTOP / docker pause) and thaw a node
  slow NODE MS           add MS milliseconds of delay to the node's traffic (tc netem)
  flaky NODE PERCENT     drop PERCENT % of the node's packets (tc netem)
  fast NODE              remove delay and loss again

Options
  --local, --docker      choose the backend (or CLUSTER_BACKEND=local|docker)
  -p, --project NAME     Compose project / state name (or COMPOSE_PROJECT_NAME; default zmqsim)
  -h, --help, help       this text

Dashboard: http://localhost:\${MONITOR_PORT:-5572}/
Exit codes: 0 ok, 1 failed, 2 bad input, 3 a port is taken (the message names its holder)
EOF
}

#######################################
# Shared helpers.
#######################################

# The Python that runs the helpers and (local backend) the cluster itself.
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    PY="${PYTHON}"
  elif [[ -x "${REPO_ROOT}/.venv/bin/python" ]]; then
    PY="${REPO_ROOT}/.venv/bin/python"
  else
    PY="$(command -v python3 || true)"
  fi
  [[ -n "${PY}" ]] || die "python3 is needed to run this script"
}

ctl() { sigint_once_ready "${PY}" "${CTL}" "$@"; }

# Run a Python program that installs its own Ctrl-C handling first thing (cluster_ctl.py,
# client.py): started with SIGINT ignored, a Ctrl-C during its imports cannot end it with a
# traceback; from its handler on, Ctrl-C reaches it as usual. (Through `docker exec` the
# client in the container just finishes its batch.)
sigint_once_ready() { (trap '' INT && exec "$@"); }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

monitor_url() { printf 'http://127.0.0.1:%s' "$(monitor_port)"; }

require_arg() {
  local name="$1" value="${2:-}"
  [[ -n "${value}" ]] || die_usage "${COMMAND}: missing ${name} (see --help)"
}

# The argv that runs this script again with the same backend and project.
self_argv() { printf '%s\n' "${SCRIPT_DIR}/simulate-cluster.sh" "--${BACKEND}" -p "${PROJECT}"; }

docker_engine_up() {
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

resolve_backend() {
  case "${BACKEND}" in
    local) ;;
    docker)
      docker_engine_up || die_usage "no Docker engine answers (is dockerd running? try \`docker" \
        "info\`). Use the local backend instead: --local or CLUSTER_BACKEND=local"
      ;;
    auto)
      if [[ -f "$(local_dir)/workers" ]]; then
        BACKEND=local
      elif docker_engine_up; then
        BACKEND=docker
      else
        BACKEND=local
      fi
      ;;
    *) die_usage "CLUSTER_BACKEND must be local or docker, not '${BACKEND}'" ;;
  esac
}

# Valid node names of the running cluster, one per line.
node_names() {
  local workers i
  workers="$(worker_count)"
  printf '%s\n' coordinator
  for ((i = 1; i <= workers; i++)); do printf 'worker%d\n' "${i}"; done
  printf '%s\n' monitor
}

# Exit 2 unless NODE is one of the cluster's nodes (and ONLY_WORKERS if set).
check_node() {
  local node="${1:-}" only_workers="${2:-}"
  local names
  require_arg NODE "${node}"
  # A variable, not a pipe into `grep -q`: grep's early exit would SIGPIPE the writer.
  names="$(node_names | tr '\n' ' ')"
  if [[ " ${names}" != *" ${node} "* ]]; then
    die_usage "unknown node '${node}'; valid nodes: ${names% }"
  fi
  if [[ -n "${only_workers}" && "${node}" != worker* ]]; then
    names="$(node_names | grep '^worker' | tr '\n' ' ')"
    die_usage "${COMMAND} works on workers only; valid nodes: ${names% }"
  fi
}

# Exit 3 with one line per taken port, naming the process that holds it, unless every
# NAME=PORT given is free on 127.0.0.1. Called before anything starts: nothing to undo.
require_free_ports() {
  local taken line
  taken="$(ctl ports-in-use --host 127.0.0.1 "$@")"
  [[ -n "${taken}" ]] || return 0
  while IFS= read -r line; do err "${line}"; done <<<"${taken}"
  exit 3
}

# After a fault, wait until the monitor reports the node in STATE and print how long it took.
await_verdict() {
  local node="$1" state="$2" elapsed
  if ((WAIT_FOR_VERDICT == 0)) || [[ "${node}" != worker* ]]; then
    return 0
  fi
  if elapsed="$(ctl wait --url "$(monitor_url)" --node "${node}" --state "${state}" --timeout 30)"; then
    info "monitor reports ${node} ${state} after ${elapsed} s"
  else
    die "the monitor did not report ${node} ${state} within 30 s"
  fi
}

#######################################
# Docker backend.
#######################################
docker_dir() { printf '%s/docker-%s' "${STATE_ROOT}" "${PROJECT}"; }
image_name() { printf '%s-node:latest' "${PROJECT}"; }

# Compose v2 (`docker compose`) first, then v1 (`docker-compose`).
detect_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    die_usage "neither \`docker compose\` (v2) nor \`docker-compose\` (v1) is installed;" \
      "install one, or use the local backend: --local"
  fi
}

# Compose with this project's files and settings. `compose --shielded ARGS` runs it in a
# session of its own: a Ctrl-C in this terminal (SIGINT to our process group) cannot reach it.
compose() {
  local files=(-f "${COMPOSE_FILE}") session=()
  if [[ "${1:-}" == --shielded ]]; then
    session=(setsid --wait)
    shift
  fi
  if [[ -f "$(docker_dir)/workers.yml" ]]; then
    files+=(-f "$(docker_dir)/workers.yml")
  fi
  CLUSTER_IMAGE="$(image_name)" MONITOR_PORT="${MONITOR_PORT:-5572}" \
    HEARTBEAT_INTERVAL="${HEARTBEAT_INTERVAL}" LIVENESS="${LIVENESS}" \
    ${session[@]+"${session[@]}"} "${COMPOSE[@]}" "${files[@]}" -p "${PROJECT}" "$@"
}

# `compose down ARGS` for a stop, shielded, with its output in a file: a closed stdout (the
# pipe to a dead `tee`) cannot kill it halfway. The output is shown only if it fails.
compose_down() {
  local log status=0
  log="$(mktemp "${TMPDIR:-/tmp}/zsim-down.XXXXXX")"
  compose --shielded down --remove-orphans --timeout 5 "$@" >"${log}" 2>&1 </dev/null \
    || status=$?
  if ((status != 0)); then
    err "compose down failed (exit ${status}): $(tail -n 3 "${log}" | tr '\n' ' ')"
  fi
  rm -f "${log}"
  return "${status}"
}

# Container id of a service, running or not (both Compose versions set these labels).
container_id() {
  docker ps -aq --filter "label=com.docker.compose.project=${PROJECT}" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}

project_containers() {
  docker ps -aq --filter "label=com.docker.compose.project=${PROJECT}"
}

cluster_network() {
  docker network ls -q --filter "label=com.docker.compose.project=${PROJECT}" \
    --filter "label=com.docker.compose.network=cluster" | head -n 1
}

docker_require_started() {
  [[ -n "$(container_id coordinator)" ]] \
    || die_usage "cluster '${PROJECT}' was never started (docker backend): run \`$0 start\` first"
}

# Extra workers beyond the three in docker-compose.yml live in a generated override file.
write_worker_override() {
  local workers="$1" file i
  file="$(docker_dir)/workers.yml"
  rm -f "${file}"
  ((workers > BASE_WORKERS_IN_COMPOSE)) || return 0
  {
    echo "# Generated by simulate-cluster.sh start --workers ${workers}; removed by stop."
    echo "services:"
    for ((i = BASE_WORKERS_IN_COMPOSE + 1; i <= workers; i++)); do
      cat <<EOF
  worker${i}:
    extends: {service: worker1}
    environment: {NODE_ID: worker${i}}
    command: [python, 02-cluster-patterns/worker.py, --id=worker${i}, --coordinator=coordinator,
              "--heartbeat-interval=${HEARTBEAT_INTERVAL}", "--liveness=${LIVENESS}"]
EOF
    done
  } >"${file}"
}

docker_build() {
  info "building $(image_name) from docker/Dockerfile"
  docker build --label "com.zmqsim.project=${PROJECT}" -f "${SCRIPT_DIR}/Dockerfile" \
    -t "$(image_name)" "${REPO_ROOT}"
}

docker_start() {
  local workers="$1" services=(coordinator monitor) i
  # A project that already has containers is the user's: start it again as it is, no undo.
  if [[ -z "$(project_containers)" ]]; then
    require_free_ports "MONITOR_PORT=${MONITOR_PORT:-5572}"
    UNDO=docker_stop # from here on a failure or Ctrl-C removes what compose created
  fi
  # Always build: with the layer cache this takes seconds and picks up edited code.
  info "building $(image_name) (cached layers make this quick)"
  docker build -q --label "com.zmqsim.project=${PROJECT}" -f "${SCRIPT_DIR}/Dockerfile" \
    -t "$(image_name)" "${REPO_ROOT}" >/dev/null
  mkdir -p "$(docker_dir)"
  echo "${workers}" >"$(docker_dir)/workers"
  write_worker_override "${workers}"
  for ((i = 1; i <= workers; i++)); do services+=("worker${i}"); done
  compose up -d --no-build "${services[@]}"
  # Compose v1.29 has no `up --wait`: poll the monitor's view, then the healthchecks.
  if ! ctl wait-ready --url "$(monitor_url)" --workers "${workers}" \
    --timeout "${START_TIMEOUT_S}" >/dev/null || ! docker_wait_healthy "${services[@]}"; then
    # The undo removes the containers, and their logs with them: keep the logs.
    compose logs --no-color --tail 100 >"$(docker_dir)/failed-start.log" 2>&1 || true
    die "the cluster did not become ready in ${START_TIMEOUT_S} s; logs:" \
      "$(docker_dir)/failed-start.log"
  fi
}

docker_wait_healthy() {
  local deadline=$((SECONDS + START_TIMEOUT_S)) service pending
  while ((SECONDS < deadline)); do
    pending=0
    for service in "$@"; do
      if [[ "$(docker inspect -f '{{.State.Health.Status}}' "$(container_id "${service}")")" \
        != healthy ]]; then
        pending=1
      fi
    done
    ((pending)) || return 0
    sleep 0.5
  done
  return 1
}

docker_stop() {
  if [[ -n "$(project_containers)" || -n "$(cluster_network)" ]]; then
    compose_down
  fi
  rm -f "$(docker_dir)/workers" "$(docker_dir)/workers.yml" "$(docker_dir)/partitioned-"*
}

docker_cleanup() {
  local images volumes
  if [[ -n "$(project_containers)" || -n "$(cluster_network)" ]]; then
    compose_down --volumes
  fi
  volumes="$(docker volume ls -q --filter "label=com.docker.compose.project=${PROJECT}")"
  if [[ -n "${volumes}" ]]; then
    # shellcheck disable=SC2086 # one name per word
    docker volume rm ${volumes} >/dev/null
  fi
  # The tagged image plus older builds of this project that a rebuild left untagged.
  images="$({
    docker images -q "$(image_name | cut -d: -f1)"
    docker images -q --filter "label=com.zmqsim.project=${PROJECT}"
  } | sort -u)"
  if [[ -n "${images}" ]]; then
    # shellcheck disable=SC2086 # one id per word
    docker image rm -f ${images} >/dev/null
  fi
  rm -rf "$(docker_dir)"
}

docker_status_rows() {
  local node id state health
  while read -r node; do
    id="$(container_id "${node}")"
    if [[ -z "${id}" ]]; then
      echo "${node}|absent|"
      continue
    fi
    state="$(docker inspect -f '{{.State.Status}}' "${id}")"
    health="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "${id}")"
    if [[ -f "$(docker_dir)/partitioned-${node}" ]]; then
      state+=",partitioned"
    fi
    echo "${node}|${state}|${health}"
  done < <(node_names)
}

docker_monitor_port() {
  local id mapping=""
  id="$(container_id monitor)"
  if [[ -n "${id}" ]]; then
    mapping="$(docker port "${id}" 5572/tcp 2>/dev/null | head -n 1 || true)"
  fi
  if [[ -n "${mapping}" ]]; then
    echo "${mapping##*:}"
  else
    echo "${MONITOR_PORT:-5572}"
  fi
}

# Run a command as root inside the node's container (tc needs NET_ADMIN, granted in Compose).
docker_root_exec() {
  local node="$1"
  shift
  docker exec -u root "$(container_id "${node}")" "$@"
}

# `tc qdisc ACTION dev DEV root [ARGS]` on the container's interface with the default route.
docker_tc() {
  local node="$1"
  shift
  # shellcheck disable=SC2016 # expanded by the container's sh, not here
  docker_root_exec "${node}" sh -c \
    'dev=$(ip -o route show default | sed -n "s/.* dev \([^ ]*\).*/\1/p" | head -n 1)
     action="$1"; shift
     exec tc qdisc "$action" dev "${dev:-eth0}" root "$@"' tc "$@"
}

#######################################
# Local backend.
#######################################
local_dir() { printf '%s/local-%s' "${STATE_ROOT}" "${PROJECT}"; }

local_require_started() {
  [[ -f "$(local_dir)/workers" ]] \
    || die_usage "cluster '${PROJECT}' was never started (local backend): run \`$0 --local start\` first"
}

local_setting() { cat "$(local_dir)/$1"; }

# Namespace and interface names: short, unique per project, and recognisably ours.
ns_tag() { printf '%s' "${PROJECT}" | md5sum | cut -c1-6; }
hub_ns() { printf 'zsim-%s-hub' "$(ns_tag)"; }
worker_ns() { printf 'zsim-%s-%s' "$(ns_tag)" "$1"; }
veth_hub() { printf 'zs%sw%sb' "$(ns_tag)" "${1#worker}"; }
veth_node() { printf 'zs%sw%sa' "$(ns_tag)" "${1#worker}"; }

# Unix socket paths must fit in 108 bytes, so this one lives in /tmp, not the state dir.
relay_socket() { printf '%s/zsim-%s-coordinator.sock' "${TMPDIR:-/tmp}" "$(ns_tag)"; }

uses_netns() { [[ "$(local_setting netns 2>/dev/null || echo 0)" == 1 ]]; }

netns_possible() {
  [[ "$(id -u)" == 0 ]] && command -v ip >/dev/null 2>&1 && ip netns list >/dev/null 2>&1
}

# Alive = exists and is not a zombie (a container's PID 1 may never reap our orphans).
pid_alive() {
  local pid="$1" stat
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 1
  stat="$(ps -o stat= -p "${pid}" 2>/dev/null || true)"
  [[ -n "${stat}" && "${stat}" != Z* ]]
}

node_pid() { cat "$(local_dir)/$1.pid" 2>/dev/null || true; }

# The argv of a node; workers in a namespace reach the coordinator through the hub relay.
node_argv() {
  local node="$1" coord_port status_port monitor_port host="127.0.0.1" index
  coord_port="$(local_setting coordinator_port)"
  status_port="$(local_setting status_port)"
  monitor_port="$(local_setting monitor_port)"
  case "${node}" in
    coordinator)
      printf '%s\n' "${PY}" -u 02-cluster-patterns/coordinator.py --bind 127.0.0.1 \
        --port "${coord_port}" --status-port "${status_port}" \
        --heartbeat-interval "${HEARTBEAT_INTERVAL}" --liveness "${LIVENESS}"
      ;;
    monitor)
      printf '%s\n' "${PY}" -u 02-cluster-patterns/monitor.py --coordinator 127.0.0.1 \
        --status-port "${status_port}" --port "${monitor_port}" --bind 127.0.0.1 \
        --heartbeat-interval "${HEARTBEAT_INTERVAL}" --liveness "${LIVENESS}"
      ;;
    worker*)
      if uses_netns; then
        index="${node#worker}"
        host="10.77.${index}.1"
        printf '%s\n' ip netns exec "$(worker_ns "${node}")"
      fi
      printf '%s\n' "${PY}" -u 02-cluster-patterns/worker.py --id "${node}" \
        --coordinator "${host}" --port "${coord_port}" \
        --heartbeat-interval "${HEARTBEAT_INTERVAL}" --liveness "${LIVENESS}"
      ;;
  esac
}

# Start one process in its own session (Ctrl-C in this terminal does not reach it).
spawn_detached() {
  local name="$1"
  shift
  (cd "${REPO_ROOT}" && exec setsid "$@" >>"$(local_dir)/${name}.log" 2>&1 </dev/null) &
  echo "$!" >"$(local_dir)/${name}.pid"
}

start_node() {
  local node="$1" argv=()
  mapfile -t argv < <(node_argv "${node}")
  spawn_detached "${node}" "${argv[@]}"
}

wait_for_log() {
  local name="$1" pattern="$2" deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    grep -qw -- "${pattern}" "$(local_dir)/${name}.log" 2>/dev/null && return 0
    pid_alive "$(node_pid "${name}")" || break
    sleep 0.1
  done
  tail -n 20 "$(local_dir)/${name}.log" >&2 || true
  die "${name} did not print '${pattern}'; log: $(local_dir)/${name}.log"
}

# Hub namespace + relays + one namespace and veth pair per worker (addresses only inside them).
netns_up() {
  local workers="$1" hub i node
  hub="$(hub_ns)"
  ip netns add "${hub}"
  ip -n "${hub}" link set lo up
  for ((i = 1; i <= workers; i++)); do
    node="worker${i}"
    ip netns add "$(worker_ns "${node}")"
    ip -n "$(worker_ns "${node}")" link set lo up
    ip link add "$(veth_node "${node}")" netns "$(worker_ns "${node}")" \
      type veth peer name "$(veth_hub "${node}")" netns "${hub}"
    ip -n "${hub}" addr add "10.77.${i}.1/24" dev "$(veth_hub "${node}")"
    ip -n "$(worker_ns "${node}")" addr add "10.77.${i}.2/24" dev "$(veth_node "${node}")"
    ip -n "${hub}" link set "$(veth_hub "${node}")" up
    ip -n "$(worker_ns "${node}")" link set "$(veth_node "${node}")" up
  done
  local sock
  sock="$(relay_socket)"
  spawn_detached relay-host "${PY}" -u "${RELAY}" unix-to-tcp --listen "${sock}" \
    --to "127.0.0.1:$(local_setting coordinator_port)"
  wait_for_log relay-host ready
  spawn_detached relay-hub ip netns exec "${hub}" "${PY}" -u "${RELAY}" tcp-to-unix \
    --listen "0.0.0.0:$(local_setting coordinator_port)" --to "${sock}"
  wait_for_log relay-hub ready
}

netns_down() {
  local ns tag
  tag="$(ns_tag)"
  while read -r ns _; do
    [[ "${ns}" == "zsim-${tag}-"* ]] && ip netns delete "${ns}"
  done < <(ip netns list 2>/dev/null)
  return 0
}

local_start() {
  local workers="$1" i
  if [[ -f "$(local_dir)/workers" ]] && pid_alive "$(node_pid coordinator)"; then
    die_usage "cluster '${PROJECT}' is already running (local backend); \`$0 --local stop\` first"
  fi
  local_stop_processes # leftovers of a cluster that died, which may hold its ports
  require_free_ports "COORDINATOR_PORT=${COORDINATOR_PORT:-5570}" \
    "STATUS_PORT=${STATUS_PORT:-5571}" "MONITOR_PORT=${MONITOR_PORT:-5572}"
  mkdir -p "$(local_dir)"
  rm -f "$(local_dir)"/*.log
  echo "${COORDINATOR_PORT:-5570}" >"$(local_dir)/coordinator_port"
  echo "${STATUS_PORT:-5571}" >"$(local_dir)/status_port"
  echo "${MONITOR_PORT:-5572}" >"$(local_dir)/monitor_port"
  if netns_possible; then echo 1; else echo 0; fi >"$(local_dir)/netns"
  echo "${workers}" >"$(local_dir)/workers"
  # A start that fails half-way leaves no process, relay or namespace behind.
  UNDO=local_stop
  start_node coordinator
  wait_for_log coordinator ready
  if uses_netns; then
    netns_up "${workers}"
  fi
  start_node monitor
  for ((i = 1; i <= workers; i++)); do start_node "worker${i}"; done
  wait_for_log monitor ready
  if ! ctl wait-ready --url "$(monitor_url)" --workers "${workers}" \
    --timeout "${START_TIMEOUT_S}" >/dev/null; then
    die "the cluster did not become ready in ${START_TIMEOUT_S} s; see \`$0 --local logs\`"
  fi
}

# Stop every process we recorded: SIGTERM (thawing paused ones), then SIGKILL stragglers.
local_stop_processes() {
  local pidfile pid deadline
  [[ -d "$(local_dir)" ]] || return 0
  for pidfile in "$(local_dir)"/*.pid; do
    [[ -f "${pidfile}" ]] || continue
    pid="$(cat "${pidfile}")"
    if pid_alive "${pid}"; then
      kill -TERM "${pid}" 2>/dev/null || true
      kill -CONT "${pid}" 2>/dev/null || true
    fi
  done
  deadline=$((SECONDS + 8))
  for pidfile in "$(local_dir)"/*.pid; do
    [[ -f "${pidfile}" ]] || continue
    pid="$(cat "${pidfile}")"
    while pid_alive "${pid}" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_alive "${pid}"; then kill -KILL "${pid}" 2>/dev/null || true; fi
    rm -f "${pidfile}"
  done
  rm -f "$(relay_socket)"
  netns_down
}

local_stop() {
  local_stop_processes
  rm -f "$(local_dir)/workers" "$(local_dir)/partitioned-"*
}

local_status_rows() {
  local node pid state detail
  while read -r node; do
    pid="$(node_pid "${node}")"
    detail="pid ${pid:--}"
    if ! pid_alive "${pid}"; then
      state="dead"
    else
      state="$(ps -o stat= -p "${pid}" | cut -c1)"
      case "${state}" in
        T) state="paused" ;;
        Z) state="dead" ;;
        *) state="running" ;;
      esac
    fi
    if [[ -f "$(local_dir)/partitioned-${node}" ]]; then
      state+=",partitioned"
    fi
    echo "${node}|${state}|${detail}"
  done < <(node_names)
}

local_require_netns() {
  uses_netns || die_usage "${COMMAND} needs network namespaces, which the local backend" \
    "creates only when started as root; start it as root, or use the Docker backend"
}

# `tc qdisc ACTION dev VETH root [ARGS]` on the worker's end of its veth pair.
local_tc() {
  local node="$1" action="$2"
  shift 2
  ip netns exec "$(worker_ns "${node}")" tc qdisc "${action}" dev "$(veth_node "${node}")" root "$@"
}

#######################################
# Dispatch by backend.
#######################################
worker_count() {
  local file
  if [[ "${BACKEND}" == docker ]]; then file="$(docker_dir)/workers"; else file="$(local_dir)/workers"; fi
  cat "${file}" 2>/dev/null || echo "${DEFAULT_WORKERS}"
}

monitor_port() {
  if [[ "${BACKEND}" == docker ]]; then
    docker_monitor_port
  else
    local_setting monitor_port 2>/dev/null || echo "${MONITOR_PORT:-5572}"
  fi
}

require_started() {
  if [[ "${BACKEND}" == docker ]]; then docker_require_started; else local_require_started; fi
}

#######################################
# Commands: one function each.
#######################################
cmd_build() {
  if [[ "${BACKEND}" == docker ]]; then
    docker_build
  else
    "${PY}" -c 'import zmq, cluster_patterns' 2>/dev/null \
      || die "the local backend needs the project installed: run \`make venv\`" \
        "(or pip install -r requirements.txt)"
    info "local backend: nothing to build; ${PY} imports zmq and cluster_patterns"
  fi
}

cmd_start() {
  local workers="${DEFAULT_WORKERS}"
  while (($#)); do
    case "$1" in
      --workers)
        workers="${2:-}"
        shift 2 || true
        ;;
      --workers=*)
        workers="${1#*=}"
        shift
        ;;
      *) die_usage "start: unknown option '$1' (usage: start [--workers N])" ;;
    esac
  done
  if ! is_uint "${workers}" || ((workers < 1 || workers > MAX_WORKERS)); then
    die_usage "start: --workers needs a number from 1 to ${MAX_WORKERS}, not '${workers}'"
  fi
  info "starting cluster '${PROJECT}' (${BACKEND} backend, ${workers} workers)"
  if [[ "${BACKEND}" == docker ]]; then docker_start "${workers}"; else local_start "${workers}"; fi
  UNDO="${UNDO_ONCE_STARTED}"
  info "cluster ready: ${workers} workers alive; dashboard $(monitor_url)/"
}

cmd_stop() {
  ignore_interrupts
  if [[ "${BACKEND}" == docker ]]; then docker_stop; else local_stop; fi
  info "cluster '${PROJECT}' stopped (${BACKEND} backend)"
}

cmd_status() {
  require_started
  local rows=() row
  while read -r row; do rows+=(--row "${row}"); done < <(
    if [[ "${BACKEND}" == docker ]]; then docker_status_rows; else local_status_rows; fi
  )
  info "cluster '${PROJECT}' (${BACKEND} backend)"
  ctl status --url "$(monitor_url)" "${rows[@]}"
}

cmd_cleanup() {
  ignore_interrupts
  if [[ "${BACKEND}" == docker ]]; then
    docker_cleanup
  else
    local_stop
    rm -rf "$(local_dir)"
  fi
  rmdir "${STATE_ROOT}" 2>/dev/null || true
  info "cluster '${PROJECT}' cleaned up (${BACKEND} backend)"
}

cmd_logs() {
  local service="" follow=""
  while (($#)); do
    case "$1" in
      -f | --follow) follow=1 ;;
      -*) die_usage "logs: unknown option '$1' (usage: logs [SERVICE] [-f])" ;;
      *) service="$1" ;;
    esac
    shift
  done
  require_started
  [[ -z "${service}" ]] || check_node "${service}"
  if [[ "${BACKEND}" == docker ]]; then
    compose logs --no-color --tail 200 ${follow:+--follow} ${service:+"${service}"}
  elif [[ -n "${service}" ]]; then
    tail -n 200 ${follow:+-F} "$(local_dir)/${service}.log"
  else
    local node
    if [[ -n "${follow}" ]]; then
      mapfile -t files < <(node_names | sed "s|.*|$(local_dir)/&.log|")
      tail -n 20 -F "${files[@]}"
    else
      while read -r node; do
        tail -n 200 "$(local_dir)/${node}.log" | sed "s/^/${node} | /"
      done < <(node_names)
    fi
  fi
}

cmd_workload() {
  local count=200 kind=sleep ms=10 json="" summary
  while (($#)); do
    case "$1" in
      --count) count="${2:-}" ;;
      --kind) kind="${2:-}" ;;
      --ms) ms="${2:-}" ;;
      --json) json="${2:-}" ;;
      *) die_usage "workload: unknown option '$1'" ;;
    esac
    shift 2 || die_usage "workload: $1 needs a value"
  done
  if ! is_uint "${count}" || ((count < 1)); then
    die_usage "workload: --count needs a positive number"
  fi
  is_uint "${ms}" || die_usage "workload: --ms needs a number of milliseconds"
  [[ "${kind}" =~ ^(echo|sleep|cpu|fail)$ ]] || die_usage "workload: --kind is echo|sleep|cpu|fail"
  require_started
  local client=()
  mapfile -t client < <(client_argv --count "${count}" --kind "${kind}" --ms "${ms}")
  if [[ "${BACKEND}" == docker ]]; then
    summary="/tmp/workload-$$.json"
    local id status=0
    id="$(container_id coordinator)"
    "${client[@]}" --json "${summary}" || status=$?
    if [[ -n "${json}" ]] && docker exec "${id}" cat "${summary}" >"${json}.part"; then
      mv "${json}.part" "${json}"
    fi
    rm -f "${json:+${json}.part}"
    docker exec "${id}" rm -f "${summary}" || true
    return "${status}"
  fi
  "${client[@]}" ${json:+--json "${json}"}
}

# The argv of client.py with ARGS against the running cluster, one word per line: on this
# host (local) or inside the coordinator container (docker).
client_argv() {
  if [[ "${BACKEND}" == docker ]]; then
    printf '%s\n' docker exec "$(container_id coordinator)" python 02-cluster-patterns/client.py
  else
    printf '%s\n' "${PY}" -u "${REPO_ROOT}/02-cluster-patterns/client.py" \
      --port "$(local_setting coordinator_port)"
  fi
  printf '%s\n' --coordinator 127.0.0.1 --timeout 180 "$@"
}

cmd_test() {
  local tasks=200 json=""
  while (($#)); do
    case "$1" in
      --tasks) tasks="${2:-}" ;;
      --json) json="${2:-}" ;;
      *) die_usage "test: unknown option '$1' (usage: test [--tasks N] [--json PATH])" ;;
    esac
    shift 2 || die_usage "test: $1 needs a value"
  done
  if ! is_uint "${tasks}" || ((tasks < 1)); then
    die_usage "test: --tasks needs a positive number"
  fi
  require_started
  (($(worker_count) >= 2)) || die_usage "test needs at least 2 workers: start --workers 3"
  local sim=()
  mapfile -t sim < <(self_argv)
  info "test: ${tasks} tasks per step on cluster '${PROJECT}' (${BACKEND} backend)"
  ctl scenario --url "$(monitor_url)" --tasks "${tasks}" ${json:+--json "${json}"} \
    -- "${sim[@]}"
}

# performance_comparison.py --descriptor, run inside the coordinator container against the
# workers' agents and sshds; the descriptor comes from node-entrypoint (it knows the keys).
cmd_compare() {
  local mode=--quick executors="" json="" nodes=() id status=0
  while (($#)); do
    case "$1" in
      --smoke | --quick | --full) mode="$1" ;;
      --executors)
        executors="${2:-}"
        [[ "${executors}" =~ ^[a-z_]+(,[a-z_]+)*$ ]] \
          || die_usage "compare: --executors takes a comma list such as zmq,asyncssh"
        shift
        ;;
      --json)
        json="${2:-}"
        [[ -n "${json}" ]] || die_usage "compare: --json needs a path"
        shift
        ;;
      *)
        die_usage "compare: unknown option '$1'" \
          "(usage: compare [--smoke|--quick|--full] [--executors LIST] [--json PATH])"
        ;;
    esac
    shift
  done
  [[ "${BACKEND}" == docker ]] || die_usage "compare needs the Docker backend (each worker" \
    "container runs an agent and sshd); locally use 03-cluster-runner-simulation/performance_comparison.py"
  require_started
  mapfile -t nodes < <(node_names | grep '^worker')
  id="$(container_id coordinator)"
  local dir=/tmp/zsim-compare args=()
  docker exec "${id}" node-entrypoint descriptor "${dir}" "${nodes[@]}" >/dev/null
  args=(--descriptor "${dir}/cluster.toml" --json "${dir}/perf.json")
  [[ "${mode}" == --full ]] || args+=("${mode}") # full sampling is the script's default
  [[ -n "${executors}" ]] && args+=(--executors "${executors}")
  local tty=()
  if [[ -t 0 && -t 1 && -t 2 ]]; then
    tty=(-it) # a terminal: the progress bar shows and Ctrl-C reaches the benchmark
  else
    args+=(--no-progress)
  fi
  info "compare: performance_comparison.py ${mode} from the coordinator container against" \
    "${nodes[*]}"
  docker exec ${tty[@]+"${tty[@]}"} "${id}" python 03-cluster-runner-simulation/performance_comparison.py \
    "${args[@]}" || status=$?
  if ((status == 0)) && [[ -n "${json}" ]]; then
    docker exec "${id}" cat "${dir}/perf.json" >"${json}.part" && mv "${json}.part" "${json}"
  fi
  docker exec "${id}" rm -rf "${dir}" || true
  return "${status}"
}

cmd_fail() {
  local node="${1:-}"
  require_started
  check_node "${node}"
  if [[ "${BACKEND}" == docker ]]; then
    docker kill --signal KILL "$(container_id "${node}")" >/dev/null
  else
    local pid
    pid="$(node_pid "${node}")"
    pid_alive "${pid}" || die "${node} is not running (already failed?)"
    kill -KILL "${pid}"
  fi
  info "${node} killed (SIGKILL)"
  await_verdict "${node}" dead
}

cmd_recover() {
  local node="${1:-}"
  require_started
  check_node "${node}"
  if [[ "${BACKEND}" == docker ]]; then
    docker start "$(container_id "${node}")" >/dev/null
  else
    pid_alive "$(node_pid "${node}")" && die "${node} is still running; \`fail ${node}\` first"
    start_node "${node}"
  fi
  info "${node} restarted"
  await_verdict "${node}" alive
}

cmd_partition() {
  local node="${1:-}"
  require_started
  check_node "${node}" workers
  [[ ! -f "$(state_dir)/partitioned-${node}" ]] || die_usage "${node} is already partitioned"
  if [[ "${BACKEND}" == docker ]]; then
    docker network disconnect "$(cluster_network)" "$(container_id "${node}")"
  else
    local_require_netns
    ip -n "$(hub_ns)" link set "$(veth_hub "${node}")" down
  fi
  touch "$(state_dir)/partitioned-${node}"
  info "${node} partitioned from the cluster network"
  await_verdict "${node}" dead
}

cmd_heal() {
  local node="${1:-}"
  require_started
  check_node "${node}" workers
  [[ -f "$(state_dir)/partitioned-${node}" ]] || die_usage "${node} is not partitioned"
  if [[ "${BACKEND}" == docker ]]; then
    docker network connect --alias "${node}" "$(cluster_network)" "$(container_id "${node}")"
  else
    local_require_netns
    ip -n "$(hub_ns)" link set "$(veth_hub "${node}")" up
  fi
  rm -f "$(state_dir)/partitioned-${node}"
  info "${node} reconnected to the cluster network"
  await_verdict "${node}" alive
}

cmd_pause() {
  local node="${1:-}"
  require_started
  check_node "${node}"
  if [[ "${BACKEND}" == docker ]]; then
    docker pause "$(container_id "${node}")" >/dev/null
  else
    kill -STOP "$(node_pid "${node}")"
  fi
  info "${node} paused"
}

cmd_resume() {
  local node="${1:-}"
  require_started
  check_node "${node}"
  if [[ "${BACKEND}" == docker ]]; then
    docker unpause "$(container_id "${node}")" >/dev/null
  else
    kill -CONT "$(node_pid "${node}")"
  fi
  info "${node} resumed"
}

# slow/flaky/fast share this: `tc qdisc ACTION ... root [netem ARGS]` on the node's link.
node_tc() {
  local node="$1"
  shift
  if [[ "${BACKEND}" == docker ]]; then
    docker_tc "${node}" "$@"
  else
    local_require_netns
    local_tc "${node}" "$@"
  fi
}

# Run a host command (iptables) inside the node's network namespace; needs root here.
in_node_netns() {
  local node="$1"
  shift
  [[ "$(id -u)" == 0 ]] || die_usage "${COMMAND}: this kernel has no netem qdisc, and the" \
    "iptables fallback needs root on this host"
  if [[ "${BACKEND}" == docker ]]; then
    nsenter -t "$(docker inspect -f '{{.State.Pid}}' "$(container_id "${node}")")" -n "$@"
  else
    ip netns exec "$(worker_ns "${node}")" "$@"
  fi
}

# netem is a kernel module some kernels (e.g. minimal VM kernels) do not ship.
netem_missing() { grep -q "qdisc kind is unknown" <<<"$1"; }

# Packet loss without netem: a chain of random DROP rules in the node's own namespace.
iptables_flaky() {
  local node="$1" percent="$2" chain=ZSIM_FLAKY
  iptables_fast "${node}"
  in_node_netns "${node}" iptables -N "${chain}"
  in_node_netns "${node}" iptables -A "${chain}" -m statistic --mode random \
    --probability "$(awk -v p="${percent}" 'BEGIN { printf "%.4f", p / 100 }')" -j DROP
  in_node_netns "${node}" iptables -I INPUT -j "${chain}"
  in_node_netns "${node}" iptables -I OUTPUT -j "${chain}"
}

iptables_fast() {
  local node="$1" chain=ZSIM_FLAKY
  in_node_netns "${node}" iptables -D INPUT -j "${chain}" 2>/dev/null || true
  in_node_netns "${node}" iptables -D OUTPUT -j "${chain}" 2>/dev/null || true
  in_node_netns "${node}" iptables -F "${chain}" 2>/dev/null || true
  in_node_netns "${node}" iptables -X "${chain}" 2>/dev/null || true
}

cmd_slow() {
  local node="${1:-}" ms="${2:-}" out
  require_started
  check_node "${node}" "$([[ "${BACKEND}" == local ]] && echo workers)"
  require_arg MS "${ms}"
  is_uint "${ms}" || die_usage "slow: MS must be a whole number of milliseconds, not '${ms}'"
  if ! out="$(node_tc "${node}" replace netem delay "${ms}ms" 2>&1)"; then
    if netem_missing "${out}"; then
      die_usage "slow: this kernel has no netem qdisc (sch_netem), so delay cannot be added" \
        "here; flaky still works through iptables"
    fi
    die "slow: tc failed: ${out}"
  fi
  info "${node}: +${ms} ms delay on every packet (tc netem; undo: fast ${node})"
}

cmd_flaky() {
  local node="${1:-}" percent="${2:-}" out
  require_started
  check_node "${node}" "$([[ "${BACKEND}" == local ]] && echo workers)"
  require_arg PERCENT "${percent}"
  if ! is_uint "${percent}" || ((percent > 100)); then
    die_usage "flaky: PERCENT must be a whole number from 0 to 100, not '${percent}'"
  fi
  if out="$(node_tc "${node}" replace netem loss "${percent}%" 2>&1)"; then
    info "${node}: ${percent}% packet loss (tc netem; undo: fast ${node})"
  elif netem_missing "${out}"; then
    iptables_flaky "${node}" "${percent}"
    info "${node}: ${percent}% packet loss (iptables statistic: no netem in this kernel;" \
      "undo: fast ${node})"
  else
    die "flaky: tc failed: ${out}"
  fi
}

cmd_fast() {
  local node="${1:-}"
  require_started
  check_node "${node}" "$([[ "${BACKEND}" == local ]] && echo workers)"
  node_tc "${node}" del >/dev/null 2>&1 || true
  if [[ "$(id -u)" == 0 ]] && { [[ "${BACKEND}" == docker ]] || uses_netns; }; then
    iptables_fast "${node}"
  fi
  info "${node}: delay and loss removed"
}

cmd_demo() {
  local seconds="${DEMO_SECONDS:-0}" deadline first=() batch=() dashboard api
  is_uint "${seconds}" || die_usage "DEMO_SECONDS must be a whole number of seconds"
  if cluster_running; then
    info "demo: cluster '${PROJECT}' (${BACKEND} backend) is already running; using it as it is"
  else
    info "demo: starting cluster '${PROJECT}' on the ${BACKEND} backend"
    UNDO_ONCE_STARTED=cmd_stop
    cmd_start --workers "${DEFAULT_WORKERS}"
  fi
  mapfile -t first < <(client_argv --count 200 --kind sleep --ms 20)
  mapfile -t batch < <(client_argv --count 50 --kind cpu --ms 5)
  dashboard="http://localhost:$(monitor_port)/"
  api="$(monitor_url)/api/cluster"
  # Ctrl-C, SIGTERM or a hang-up only raise a flag, which the loop notices. Until the cluster
  # is stopped the shell runs no command substitution: a Ctrl-C kills those too, and their
  # empty output would send the script down a wrong path.
  trap 'DEMO_STOP=1' INT TERM HUP
  DEMO_STOP=0
  info "submitting 200 tasks with client.py"
  sigint_once_ready "${first[@]}" || ((DEMO_STOP)) || err "the first workload reported failures"
  info ""
  info "dashboard: ${dashboard}   (API: ${api})"
  if ((seconds > 0)); then
    info "demo runs for ${seconds} s (DEMO_SECONDS), submitting more work meanwhile"
  else
    info "press Ctrl-C to stop; in another terminal try: $0 fail worker1"
  fi
  deadline=$((SECONDS + seconds))
  while ((DEMO_STOP == 0)) && ((seconds == 0 || SECONDS < deadline)); do
    "${batch[@]}" >/dev/null 2>&1 || true
    # `|| true`: Ctrl-C also interrupts sleep, whose failure would end the script (set -e)
    # before it stops the cluster.
    ((DEMO_STOP)) || sleep 1 || true
  done
  if [[ -n "${UNDO}" ]]; then
    info "stopping the demo cluster"
    run_undo
  fi
}

cluster_running() {
  if [[ "${BACKEND}" == docker ]]; then
    [[ -n "$(container_id coordinator)" ]]
  else
    [[ -f "$(local_dir)/workers" ]]
  fi
}

state_dir() {
  if [[ "${BACKEND}" == docker ]]; then docker_dir; else local_dir; fi
}

#######################################
# Entry point: global options, backend choice, one command.
#######################################
main() {
  local args=()
  while (($#)); do
    case "$1" in
      --local) BACKEND=local ;;
      --docker) BACKEND=docker ;;
      --no-wait) WAIT_FOR_VERDICT=0 ;;
      -p | --project)
        PROJECT="${2:-}"
        shift || true
        ;;
      --project=*) PROJECT="${1#*=}" ;;
      -h | --help) args+=(help) ;;
      *) args+=("$1") ;;
    esac
    shift
  done
  set -- "${args[@]+"${args[@]}"}"
  COMMAND="${1:-}"
  if [[ -z "${COMMAND}" || "${COMMAND}" == help ]]; then
    usage
    [[ -n "${COMMAND}" ]] && exit 0
    exit 2
  fi
  shift
  [[ "${PROJECT}" =~ ^[a-z0-9][a-z0-9_-]*$ ]] \
    || die_usage "project name '${PROJECT}' must be lowercase letters, digits, '-' or '_'"
  case "${COMMAND}" in
    build | start | stop | status | cleanup | logs | test | workload | demo | compare | fail | recover \
      | partition | heal | pause | resume | slow | flaky | fast) ;;
    *)
      usage >&2
      die_usage "unknown command '${COMMAND}'"
      ;;
  esac
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  trap ':' PIPE # a write to a closed stdout fails (EPIPE) instead of ending the script
  pick_python
  resolve_backend
  [[ "${BACKEND}" == docker ]] && detect_compose
  "cmd_${COMMAND}" "$@"
}

main "$@"
