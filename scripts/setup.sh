#!/usr/bin/env bash
# Set up everything sshfleet's demo, tests and benchmarks need on a fresh Debian/Ubuntu machine:
# system packages (as root, only those missing) and a virtualenv with sshfleet and its test extras.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [EXTRAS]   (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
venv="${VENV:-.venv}"

missing=()
for pair in sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client tcpdump:tcpdump curl:curl \
            ip:iproute2 tc:iproute2 ss:iproute2 unshare:util-linux nsenter:util-linux runuser:util-linux \
            pgrep:procps tmux:tmux sudo:sudo visudo:sudo chpasswd:passwd; do
  cmd="${pair%%:*}" pkg="${pair#*:}"
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then missing+=("$pkg"); fi
done
# The benchmarks compare with Debian's parallel-ssh (pssh); clush comes with the bench extras (ClusterShell).
if [[ ",$extras," == *",bench,"* ]] && ! command -v parallel-ssh >/dev/null 2>&1; then missing+=(pssh); fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing system packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi

stamp="$venv/.installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e ".[$extras]"
  touch "$stamp"
fi
# Byte-compile the package, as pip does for a regular install: an editable install leaves it to the first import,
# and with PYTHONDONTWRITEBYTECODE set (as in some CI images) every `sshfleet` process would compile ~40 modules
# anew (~40 ms). compileall skips what is up to date.
"$venv/bin/python" -m compileall -q sshfleet agents >/dev/null
echo "setup: ok ($("$venv/bin/python" --version), venv $venv)"
