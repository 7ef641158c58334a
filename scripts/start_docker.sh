#!/usr/bin/env bash
# Make a Docker daemon answer on this machine, for the docker sandbox and its tests.
# Idempotent: installs Debian's docker.io when dockerd is missing (root only), starts dockerd
# in the background when `docker info` does not answer, then waits for it. Exit 1 if it
# cannot; the docker tests then skip and say why.
set -uo pipefail

log=${KERNELWRIGHT_DOCKERD_LOG:-/tmp/kernelwright-dockerd.log}
answers() { docker info >/dev/null 2>&1 || python3 -c 'import docker; docker.from_env().ping()' >/dev/null 2>&1; }

if answers; then
    echo "docker: the daemon already answers"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "docker: dockerd is not installed and we are not root to install it" >&2
        exit 1
    fi
    echo "docker: installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q docker.io >/dev/null 2>&1 || {
        apt-get update -q >/dev/null 2>&1
        apt-get install -y -q docker.io >/dev/null 2>&1
    } || { echo "docker: apt-get install docker.io failed" >&2; exit 1; }
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "docker: the daemon does not answer and only root may start it" >&2
    exit 1
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "docker: starting dockerd (log: $log)"
    nohup dockerd --storage-driver=overlay2 >"$log" 2>&1 &
fi
for _ in $(seq 1 60); do
    if answers; then
        echo "docker: the daemon answers"
        exit 0
    fi
    sleep 1
done
echo "docker: dockerd did not answer within 60 s; last lines of $log:" >&2
tail -n 20 "$log" >&2 2>/dev/null
exit 1
