#!/usr/bin/env bash
# Starts the services the integration tests talk to, idempotently, and prints the
# environment to use them:  eval "$(scripts/start-services.sh)"
#   - PostgreSQL 15 on 127.0.0.1:5432, role/password orchestrator (superuser: tests create databases)
#   - the Docker daemon (dockerd --iptables=false), when installed
set -euo pipefail
log() { echo "$*" >&2; }

if [ -x /usr/lib/postgresql/15/bin/postgres ]; then
  if ! pg_lsclusters 2>/dev/null | grep -q '^15 *main'; then
    pg_createcluster 15 main >&2
  fi
  pg_ctlcluster 15 main start >&2 2>/dev/null || true  # "already running" is fine
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='orchestrator'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE orchestrator LOGIN SUPERUSER PASSWORD 'orchestrator'\"" >&2
  echo "export ORCHESTRATOR_TEST_PG_URL='postgresql+psycopg://orchestrator:orchestrator@127.0.0.1:5432/postgres'"
  log "postgres ready"
fi

if command -v dockerd >/dev/null; then
  if ! docker info >/dev/null 2>&1; then
    nohup dockerd --iptables=false >/var/log/dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 100); do docker info >/dev/null 2>&1 && break; sleep 0.3; done
  fi
  docker info >/dev/null 2>&1 && log "docker ready" || log "docker did not start, see /var/log/dockerd.log"
fi
