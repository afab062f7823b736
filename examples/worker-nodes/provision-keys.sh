#!/usr/bin/env bash
#
# Generate, distribute and check the CURVE keys of the ZeroMQ node agents.
#
# One keys folder per node, made by the agent's own key tool
# (03-cluster-runner-simulation/zmq_node_agent.py keys generate): the node's agent keypair plus
# the controller's client keypair, whose public half is already in the node's allow-list.
# The node receives only what it needs: agent.key, agent.key_secret and authorized_clients/.
# The controller (cluster_runner) keeps agent.key, client.key and client.key_secret.
#
# Usage: see usage() below, or run: examples/worker-nodes/provision-keys.sh --help

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
REPO_DIR="$(cd "${SCRIPT_DIR}/../.." && pwd)"
readonly REPO_DIR
readonly AGENT_SCRIPT="${REPO_DIR}/03-cluster-runner-simulation/zmq_node_agent.py"
readonly REMOTE_KEYS_DIR="/etc/zmq-cluster/keys"
readonly SERVICE_USER="zmqagent"
PYTHON="${PYTHON:-python3}"

usage() {
  cat <<EOF
Usage: $(basename "$0") COMMAND [ARGS]

Commands:
  generate KEYDIR NODE...   make KEYDIR/NODE with the agent and client keypairs for each
                            NODE (an existing NODE folder is kept, never overwritten)
  install KEYDIR NODE DEST  copy the node's part of KEYDIR/NODE (agent.key,
                            agent.key_secret, authorized_clients/) to DEST: either
                            user@host (over ssh, into ${REMOTE_KEYS_DIR}, needs sudo
                            there) or a local directory path (a single-host setup)
  check DIR                 fail if any *.key_secret under DIR is readable by group or
                            others, or if a folder holding secrets is not 0700
  help                      show this text

Environment: PYTHON (default python3; use .venv/bin/python from the repository).
EOF
}

err() {
  echo "provision-keys: $*" >&2
}

die_usage() {
  err "$*"
  usage >&2
  exit 2
}

# Generate keys for each node with the agent's own key tool.
cmd_generate() {
  (($# >= 2)) || die_usage "generate needs KEYDIR and at least one NODE"
  local keydir="$1"
  shift
  local node
  umask 077
  mkdir -p "${keydir}"
  chmod 700 "${keydir}"
  for node in "$@"; do
    [[ "${node}" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "bad node name: ${node}"
    if [[ -e "${keydir}/${node}/agent.key_secret" ]]; then
      echo "${node}: keys exist in ${keydir}/${node}, kept"
      continue
    fi
    "${PYTHON}" "${AGENT_SCRIPT}" keys generate "${keydir}/${node}" >/dev/null
    chmod 700 "${keydir}/${node}"
    echo "${node}: generated ${keydir}/${node}"
  done
}

# Copy the node's share of its keys into a local directory with strict modes.
install_local() {
  local source="$1"
  local target="$2"
  mkdir -p "${target}/authorized_clients"
  chmod 700 "${target}"
  install -m 0644 "${source}/agent.key" "${target}/agent.key"
  install -m 0600 "${source}/agent.key_secret" "${target}/agent.key_secret"
  install -m 0644 "${source}"/authorized_clients/*.key "${target}/authorized_clients/"
  chmod 755 "${target}/authorized_clients"
  if [[ "$(id -u)" -eq 0 ]] && id "${SERVICE_USER}" >/dev/null 2>&1; then
    chown -R "${SERVICE_USER}:" "${target}"
  fi
}

# Copy the node's share of its keys to a remote host over ssh (sudo on the host).
install_remote() {
  local source="$1"
  local destination="$2"
  local staging
  staging="$(ssh "${destination}" mktemp -d)"
  scp -q -r "${source}/agent.key" "${source}/agent.key_secret" \
    "${source}/authorized_clients" "${destination}:${staging}/"
  # The remote side re-applies the modes: scp keeps them, but a umask on the way must not widen
  # them, and the service user must own the files.
  ssh "${destination}" sudo sh -e -c "'
    install -d -m 0700 -o ${SERVICE_USER} ${REMOTE_KEYS_DIR}
    install -d -m 0755 -o ${SERVICE_USER} ${REMOTE_KEYS_DIR}/authorized_clients
    install -m 0644 -o ${SERVICE_USER} ${staging}/agent.key ${REMOTE_KEYS_DIR}/agent.key
    install -m 0600 -o ${SERVICE_USER} ${staging}/agent.key_secret ${REMOTE_KEYS_DIR}/agent.key_secret
    install -m 0644 -o ${SERVICE_USER} ${staging}/authorized_clients/*.key ${REMOTE_KEYS_DIR}/authorized_clients/
    rm -rf ${staging}'"
}

cmd_install() {
  (($# == 3)) || die_usage "install needs KEYDIR NODE DEST"
  local source="$1/$2"
  local destination="$3"
  [[ -f "${source}/agent.key_secret" ]] || die_usage "no keys for node $2 in $1 (run generate)"
  if [[ "${destination}" == /* || "${destination}" == ./* ]]; then
    install_local "${source}" "${destination}"
  else
    install_remote "${source}" "${destination}"
  fi
  echo "$2: installed agent keys to ${destination}"
}

cmd_check() {
  (($# == 1)) || die_usage "check needs DIR"
  [[ -d "$1" ]] || die_usage "no such directory: $1"
  local bad=0
  local file
  while IFS= read -r file; do
    err "readable by others: ${file} (run: chmod 600 ${file})"
    bad=1
  done < <(find "$1" -name '*.key_secret' -perm /077)
  local folder
  while IFS= read -r folder; do
    if [[ -n "$(find "${folder}" -maxdepth 0 -perm /077)" ]]; then
      err "folder with secrets is not private: ${folder} (run: chmod 700 ${folder})"
      bad=1
    fi
  done < <(find "$1" -name '*.key_secret' -printf '%h\n' | sort -u)
  if ((bad)); then
    return 1
  fi
  echo "ok: every secret key under $1 is private"
}

main() {
  (($# >= 1)) || die_usage "missing COMMAND"
  local command="$1"
  shift
  case "${command}" in
    generate) cmd_generate "$@" ;;
    install) cmd_install "$@" ;;
    check) cmd_check "$@" ;;
    help | -h | --help) usage ;;
    *) die_usage "unknown command: ${command}" ;;
  esac
}

main "$@"
