#!/usr/bin/env bash
# Installs the Debian packages the test suite talks to for real:
# Docker engine, PostgreSQL, OpenSSH server, debootstrap (base images without a registry),
# Chromium (headless, for the results pages' browser tests).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)  # bench/bench_image_distribution.py: the raw star
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
command -v rsync >/dev/null || need+=(rsync)
command -v sbatch >/dev/null || need+=(slurm-wlm munge)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
[ -x /usr/bin/chromium ] || need+=(chromium)  # the results pages' browser tests (Playwright)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
echo "system packages ready"
