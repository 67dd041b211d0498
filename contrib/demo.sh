#!/usr/bin/env bash
# Run the example daemon on the defaults, as your normal (non-root) user:
#   bash contrib/demo.sh
# 1. installs watchdog-singleton into a virtualenv under ~/.local/share/watchdog-singleton
#    (from a temporary copy of this checkout, which may be read-only or shared: nothing is
#    written into it);
# 2. installs the job "demo": the example daemon, kept alive by cron;
# 3. shows its status, its first log lines and its crontab line, and how to undo it all.
# Needs python3 with venv (Debian/Ubuntu: apt-get install python3-venv), crontab and a running
# cron daemon (apt-get install cron).
set -euo pipefail
say() { printf '==> %s\n' "$*"; }
fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }

here=$(cd "$(dirname "$0")/.." && pwd)
share=${XDG_DATA_HOME:-$HOME/.local/share}/watchdog-singleton
venv=${WATCHDOG_SINGLETON_VENV:-$share/venv}
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || fail "python3 not found (Debian/Ubuntu: apt-get install python3)"
[ "$(id -u)" != 0 ] || fail "run this as your normal user, not as root: each user has their own crontab"
command -v crontab >/dev/null || fail "no crontab command (Debian/Ubuntu: apt-get install cron)"

if [ -x "$venv/bin/watchdog-singleton" ]; then
  say "1/4 watchdog-singleton is already installed in $venv: using it"
else
  say "1/4 installing watchdog-singleton into the virtualenv $venv"
  "$python" -m venv "$venv" || fail "'$python -m venv' failed (Debian/Ubuntu: apt-get install python3-venv)"
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  # pip writes build files next to the source: give it a private copy, never the checkout.
  cp -R "$here/pyproject.toml" "$here/README.md" "$here/watchdog_singleton" "$src/"
  say "    pip is fetching python-crontab, fasteners and typer and installing them (a few seconds)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$src"
fi
ws="$venv/bin/watchdog-singleton"
"$ws" --version

# The job runs the example from here, so it keeps working if the checkout moves or changes.
demo_dir="$share/demo"
mkdir -p "$demo_dir"
cp "$here/contrib/example_daemon.py" "$demo_dir/"
say "2/4 installing the job 'demo': $python -u example_daemon.py 2 (a heartbeat every 2 s), started now"
cd "$demo_dir"
"$ws" install demo -- "$python" -u example_daemon.py 2

say "3/4 waiting for its first heartbeats"
for _ in 1 2 3 4 5 6 7 8 9 10; do
  [ -n "$("$ws" logs demo -n 2)" ] && break
  sleep 0.5
done
"$ws" status demo || true
echo "--- last lines of its stdout log ($ws logs demo -f follows it):"
"$ws" logs demo -n 3
echo "--- its crontab line:"
crontab -l | grep '#watchdog-singleton:demo$'

say "4/4 done. The job stays installed: cron restarts it every minute if it is gone. To undo it all:"
echo "  $ws uninstall demo"
echo "  rm -rf $demo_dir"
[ -n "${WATCHDOG_SINGLETON_VENV:-}" ] || echo "  rm -rf $venv"
