#!/bin/sh
# node-entrypoint.sh - what a node container runs before its role's command.
#
#   node-entrypoint keys            one-shot (the `keys` service): create, once per cluster, the
#                                   CURVE keys of the coordinator's ports 5570/5571 (every role
#                                   reads /keys/coordinator) and of the 03 ZeroMQ node agent, and
#                                   the SSH host/client keys, in /keys (a named volume every node
#                                   mounts read-only; secret files 0600, never in the image)
#   node-entrypoint --agent CMD...  a worker: start the 03 ZeroMQ node agent (tcp :5580, CURVE)
#                                   and an unprivileged sshd (:2222, key login as `cluster`) in
#                                   the background, then exec CMD (the worker itself)
#   node-entrypoint descriptor DIR NODE...
#                                   write DIR/cluster.toml (a descriptor.py cluster descriptor
#                                   of NODE... with this image's ports, user and /keys paths)
#                                   and the DIR/known_hosts it names; simulate-cluster.sh
#                                   `compare` points performance_comparison.py --descriptor at it
#   node-entrypoint --id-from-env CMD...
#                                   exec CMD --id "$NODE_ID": a Swarm service of many replicas
#                                   gives each task its own NODE_ID (worker{{.Task.Slot}})
#   node-entrypoint sshd stop|start|status
#                                   stop the worker's sshd (by the pid it recorded), start it
#                                   again, or say whether it runs (exit 1 if not); `mpi` stops
#                                   it on every worker so that SSH cannot be what runs the job
#   node-entrypoint CMD...          exec CMD
#
# Before it runs a role whose command has `--keys DIR` (or --keys=DIR), it waits up to
# KEYS_WAIT_S seconds until the keys are there: for DIR under /keys, until the keys service
# has finished (/keys/.complete); elsewhere (Docker secrets) until DIR exists. `depends_on`
# only orders the start of the keys service, and Swarm has no start order at all.
#
# So any container on the network reaches every worker over both transports:
# ZmqNodeExecutor(worker1:5580, /keys/agent) and
# ssh -i /keys/ssh/client_ed25519 -p 2222 cluster@worker1.
# POSIX sh: the image's /bin/sh is dash.
set -eu

KEYS_DIR=/keys
AGENT_PORT=5580
SSH_PORT=2222
SSH_USER=cluster
KEYS_WAIT_S=${KEYS_WAIT_S:-60}
SSHD_PIDFILE=/tmp/sshd.pid
AGENT_SCRIPT=/app/03-cluster-runner-simulation/zmq_node_agent.py
CURVE_SCRIPT=/app/02-cluster-patterns/curve.py

make_keys() {
  # A volume made before the coordinator had keys lacks them: make everything again then.
  if [ -f "$KEYS_DIR/.complete" ] && [ -f "$KEYS_DIR/coordinator/coordinator.key_secret" ]; then
    echo "keys: already present in $KEYS_DIR"
    return 0
  fi
  rm -f "$KEYS_DIR/.complete"
  # Made aside, then moved into place: a role that waits for them never reads half a set.
  staging="$KEYS_DIR/.staging"
  rm -rf "$staging"
  mkdir -p "$staging/ssh"
  python "$CURVE_SCRIPT" generate "$staging/coordinator" --server coordinator
  python "$AGENT_SCRIPT" keys generate "$staging/agent"
  for name in host_ed25519 client_ed25519; do
    ssh-keygen -q -t ed25519 -N "" -C "$name" -f "$staging/ssh/$name"
  done
  cp "$staging/ssh/client_ed25519.pub" "$staging/ssh/authorized_keys"
  for part in coordinator agent ssh; do
    rm -rf "${KEYS_DIR:?}/$part"
    mv "$staging/$part" "$KEYS_DIR/$part"
  done
  rmdir "$staging"
  touch "$KEYS_DIR/.complete"
  echo "keys: generated in $KEYS_DIR"
}

# The directory that the command's --keys names ("" without --keys).
keys_dir_of() {
  previous=""
  for word in "$@"; do
    case "$word" in
      --keys=*) printf '%s\n' "${word#--keys=}"; return 0 ;;
    esac
    if [ "$previous" = "--keys" ]; then
      printf '%s\n' "$word"
      return 0
    fi
    previous="$word"
  done
}

# Wait (5 checks a second, up to KEYS_WAIT_S) until PATH exists; 1 if it never did.
wait_for() {
  checks=$((KEYS_WAIT_S * 5))
  while [ ! -e "$1" ]; do
    if [ "$checks" -le 0 ]; then
      return 1
    fi
    checks=$((checks - 1))
    sleep 0.2
  done
}

wait_for_keys() {
  dir="$(keys_dir_of "$@")"
  if [ -z "$dir" ]; then
    return 0
  fi
  case "$dir" in
    "$KEYS_DIR"/*) ready="$KEYS_DIR/.complete" ;;
    *) ready="$dir" ;;
  esac
  if ! wait_for "$ready"; then
    echo "node-entrypoint: no keys at $ready after ${KEYS_WAIT_S}s (did the keys service run?)" >&2
    exit 1
  fi
}

start_sshd() {
  config=/tmp/sshd_config
  cat >"$config" <<CONFIG
Port $SSH_PORT
HostKey $KEYS_DIR/ssh/host_ed25519
AuthorizedKeysFile $KEYS_DIR/ssh/authorized_keys
PidFile none
StrictModes no
UsePAM no
UseDNS no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PrintMotd no
MaxStartups 64
MaxSessions 64
LogLevel ERROR
CONFIG
  /usr/sbin/sshd -D -e -f "$config" &
  echo "$!" >"$SSHD_PIDFILE"
}

# Alive and not a zombie: the worker that node-entrypoint became never reaps its sshd.
pid_alive() {
  [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}

sshd_running() {
  [ -f "$SSHD_PIDFILE" ] && pid_alive "$(cat "$SSHD_PIDFILE")"
}

# sshd stop|start|status: the SSH baseline's daemon, turned off and on for the MPI job.
sshd_control() {
  case "${1:-}" in
    stop)
      if ! sshd_running; then
        echo "sshd: not running"
        return 0
      fi
      pid="$(cat "$SSHD_PIDFILE")"
      kill "$pid"
      checks=50
      while pid_alive "$pid" && [ "$checks" -gt 0 ]; do
        checks=$((checks - 1))
        sleep 0.1
      done
      if pid_alive "$pid"; then
        echo "node-entrypoint: sshd (pid $pid) did not stop" >&2
        return 1
      fi
      rm -f "$SSHD_PIDFILE"
      echo "sshd: stopped (pid $pid)"
      ;;
    start)
      if sshd_running; then
        echo "sshd: already running (pid $(cat "$SSHD_PIDFILE"))"
        return 0
      fi
      start_sshd 2>>/tmp/sshd.log
      echo "sshd: started (pid $(cat "$SSHD_PIDFILE"))"
      ;;
    status)
      if sshd_running; then
        echo "sshd: running (pid $(cat "$SSHD_PIDFILE"))"
      else
        echo "sshd: not running"
        return 1
      fi
      ;;
    *)
      echo "node-entrypoint: usage: node-entrypoint sshd stop|start|status" >&2
      return 2
      ;;
  esac
}

start_agent() {
  python -u "$AGENT_SCRIPT" serve --node-id "${NODE_ID:-$(hostname)}" --bind 0.0.0.0 \
    --port "$AGENT_PORT" --keys "$KEYS_DIR/agent" &
}

# Every worker serves the one host key the `keys` service made, so known_hosts lists it
# once per node name; the descriptor then names only absolute paths.
write_descriptor() {
  if [ "$#" -lt 2 ]; then
    echo "node-entrypoint: usage: node-entrypoint descriptor DIR NODE..." >&2
    exit 2
  fi
  dir="$1"
  shift
  if [ ! -f "$KEYS_DIR/.complete" ]; then
    echo "node-entrypoint: no keys in $KEYS_DIR (did the keys service run?)" >&2
    exit 1
  fi
  mkdir -p "$dir"
  host_key="$(cut -d' ' -f1,2 "$KEYS_DIR/ssh/host_ed25519.pub")"
  : >"$dir/known_hosts"
  {
    echo "# Generated by node-entrypoint descriptor: the simulated cluster's workers."
    echo "[cluster]"
    echo 'name = "docker-simulation"'
    echo ""
    echo "[defaults]"
    echo "zmq_port = $AGENT_PORT"
    echo "ssh_port = $SSH_PORT"
    echo "ssh_user = \"$SSH_USER\""
    echo "ssh_key = \"$KEYS_DIR/ssh/client_ed25519\""
    echo "ssh_known_hosts = \"$dir/known_hosts\""
    echo "curve_keys_dir = \"$KEYS_DIR/agent\""
  } >"$dir/cluster.toml"
  for node in "$@"; do
    echo "[$node]:$SSH_PORT $host_key" >>"$dir/known_hosts"
    printf '\n[[nodes]]\nid = "%s"\nhost = "%s"\n' "$node" "$node" >>"$dir/cluster.toml"
  done
}

case "${1:-}" in
  keys)
    make_keys
    ;;
  descriptor)
    shift
    write_descriptor "$@"
    ;;
  sshd)
    shift
    sshd_control "$@"
    ;;
  --agent)
    shift
    wait_for_keys "$@"
    if wait_for "$KEYS_DIR/.complete" && [ -f "$AGENT_SCRIPT" ]; then
      start_agent
      if [ -x /usr/sbin/sshd ]; then start_sshd; fi
    else
      echo "node-entrypoint: no keys in $KEYS_DIR: node agent and sshd not started" >&2
    fi
    exec "$@"
    ;;
  --id-from-env)
    shift
    wait_for_keys "$@"
    exec "$@" --id "${NODE_ID:?node-entrypoint: --id-from-env needs NODE_ID}"
    ;;
  *)
    wait_for_keys "$@"
    exec "$@"
    ;;
esac
