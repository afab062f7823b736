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
#   node-entrypoint sshd stop|start|status
#                                   stop the worker's sshd (by the pid it recorded), start it
#                                   again, or say whether it runs (exit 1 if not); `mpi` stops
#                                   it on every worker so that SSH cannot be what runs the job
#   node-entrypoint CMD...          exec CMD
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
  mkdir -p "$KEYS_DIR/ssh"
  python "$CURVE_SCRIPT" generate "$KEYS_DIR/coordinator" --server coordinator
  python "$AGENT_SCRIPT" keys generate "$KEYS_DIR/agent"
  for name in host_ed25519 client_ed25519; do
    rm -f "$KEYS_DIR/ssh/$name" "$KEYS_DIR/ssh/$name.pub"
    ssh-keygen -q -t ed25519 -N "" -C "$name" -f "$KEYS_DIR/ssh/$name"
  done
  cp "$KEYS_DIR/ssh/client_ed25519.pub" "$KEYS_DIR/ssh/authorized_keys"
  touch "$KEYS_DIR/.complete"
  echo "keys: generated in $KEYS_DIR"
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
    if [ -f "$KEYS_DIR/.complete" ] && [ -f "$AGENT_SCRIPT" ]; then
      start_agent
      if [ -x /usr/sbin/sshd ]; then start_sshd; fi
    else
      echo "node-entrypoint: no keys in $KEYS_DIR: node agent and sshd not started" >&2
    fi
    exec "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
