#!/usr/bin/env bash
# Run the example daemon on the defaults, as your normal (non-root) user:
#   bash contrib/demo.sh
# Installs watchdog-singleton into a virtualenv under ~/.local/share, then installs the job
# "demo" (the example daemon, kept alive by cron), and shows its status and first log lines.
# Undo with: ~/.local/share/watchdog-singleton/venv/bin/watchdog-singleton uninstall demo
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${WATCHDOG_SINGLETON_VENV:-$HOME/.local/share/watchdog-singleton/venv}
python=$(command -v python3)
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
if [ ! -x "$venv/bin/watchdog-singleton" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$here"
fi
ws="$venv/bin/watchdog-singleton"
cd "$here/contrib"
"$ws" install demo -- "$python" -u example_daemon.py 2
sleep 3
"$ws" status demo || true
echo "--- last lines of its stdout log:"
"$ws" logs demo -n 3
echo "--- its crontab line:"
crontab -l | grep '#watchdog-singleton:demo$'
