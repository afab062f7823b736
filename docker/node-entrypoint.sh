#!/bin/sh
# node-entrypoint.sh - what a node container runs before its role's command.
#
#   node-entrypoint keys            one-shot (the `keys` service): create, once, the CURVE keys
#                                   of the 03 ZeroMQ node agent and the SSH host/client keys in
#                                   /keys (a named volume every node mounts read-only)
#   node-entrypoint --agent CMD...  a worker: start the 03 ZeroMQ node agent (tcp :5580, CURVE)
#                                   and an unprivileged sshd (:2222, key login as `cluster`) in
#                                   the background, then exec CMD (the worker itself)
#   node-entrypoint CMD...          exec CMD
#
# So performance_comparison-style runs can reach every worker over both transports from
# inside the network: ZmqNodeExecutor(worker1:5580, /keys/agent) and
# ssh -i /keys/ssh/client_ed25519 -p 2222 cluster@worker1.
# POSIX sh: the image's /bin/sh is dash.
set -eu

KEYS_DIR=/keys
AGENT_PORT=5580
SSH_PORT=2222
AGENT_SCRIPT=/app/03-cluster-runner-simulation/zmq_node_agent.py

make_keys() {
  if [ -f "$KEYS_DIR/.complete" ]; then
    echo "keys: already present in $KEYS_DIR"
    return 0
  fi
  mkdir -p "$KEYS_DIR/ssh"
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
}

start_agent() {
  python -u "$AGENT_SCRIPT" serve --node-id "${NODE_ID:-$(hostname)}" --bind 0.0.0.0 \
    --port "$AGENT_PORT" --keys "$KEYS_DIR/agent" &
}

case "${1:-}" in
  keys)
    make_keys
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
