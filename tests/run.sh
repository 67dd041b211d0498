#!/usr/bin/env bash
# The test command: bash tests/run.sh [pytest args...]
# Installs what the suite needs (the cron daemon, a virtualenv from Debian's python3, the test
# user), starts cron, and runs pytest. Run as root on a fresh Debian machine; as a normal user
# the tests that need the test user and the real cron daemon are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  if ! command -v cron >/dev/null 2>&1 || ! command -v crontab >/dev/null 2>&1 || ! command -v flock >/dev/null 2>&1 || ! command -v bindfs >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cron util-linux bindfs >/dev/null
  fi
  # The cluster-lease tests run a throwaway PostgreSQL (tests/kits/pgkit.py makes and removes it).
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  if ! { [ -f /run/crond.pid ] && kill -0 "$(cat /run/crond.pid)" 2>/dev/null; }; then
    /usr/sbin/cron
  fi
fi

# A venv the unprivileged test user can run: made from Debian's python3, in a world-readable place.
base_python=/usr/bin/python3
[ -x "$base_python" ] || base_python=$(command -v python3)
venv=${WATCHDOG_SINGLETON_TEST_VENV:-/tmp/watchdog-singleton-test-venv}
rm -rf "$venv"
"$base_python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check ".[test]"
chmod -R a+rX "$venv"

echo "ruff check watchdog_singleton tests bench"
"$venv/bin/ruff" check watchdog_singleton tests bench
echo "mypy watchdog_singleton tests bench"
"$venv/bin/mypy" watchdog_singleton tests bench

# A real single-node Slurm for the tests marked slurm (tests/kits/slurm/start.sh; stopped on exit unless
# another test run still uses it). If it cannot start, its line is printed and those tests fail.
if [ "$(id -u)" = 0 ]; then
  mkdir -p /run/watchdog-singleton-slurm/users && touch "/run/watchdog-singleton-slurm/users/$$"
  trap 'bash tests/kits/slurm/stop.sh --release $$' EXIT
  slurm_t0=$SECONDS
  bash tests/kits/slurm/start.sh && echo "slurm: start.sh took $((SECONDS - slurm_t0)) s" || true
fi

set +e
# Two workers, each its own test user (tests/kits/testuser.py); the Slurm tests on one of them.
# Most tests wait on real processes, cron and Slurm rather than compute: this halves the wall time.
"$venv/bin/python" -m pytest -ra --durations=15 -n 2 --dist loadgroup "$@"
code=$?
# The run-anywhere half again as a normal user (the tests that need root skip themselves), so
# that no fixture assumes root: a copy of the checkout it can read, the test user's own home.
if [ "$(id -u)" = 0 ] && [ "$code" = 0 ]; then
  user=${WATCHDOG_SINGLETON_TEST_USER:-wstest}
  copy=$(mktemp -d /tmp/ws-suite.XXXXXX)
  cp -r watchdog_singleton tests contrib docs README.md pyproject.toml "$copy/" && chmod -R a+rX "$copy"
  echo "pytest as $user (not root)"
  (cd "$copy" && runuser -u "$user" -- env HOME="$(getent passwd "$user" | cut -d: -f6)" \
     PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@")
  code=$?
  rm -rf "$copy"
fi
set -e
[ "$code" = 5 ] && { echo "pytest collected no tests"; exit 1; }
exit "$code"
