#!/usr/bin/env bash
# Stop what tests/kits/slurm/start.sh started: slurmd, slurmctld and (if start.sh started it) munged, by
# the pids recorded in /run/watchdog-singleton-slurm/. Never by name. The packages, slurm.conf,
# the munge key and slurmctld's saved state stay. Prints one line.
set -uo pipefail
rundir=/run/watchdog-singleton-slurm
[ "$(id -u)" = 0 ] || { echo "slurm: stop: must run as root" >&2; exit 1; }

# stop.sh --release PID: tests/run.sh (process PID) is done with Slurm; stop only when no other
# run.sh that registered in $rundir/users/ still runs (several test runs may share one machine).
if [ "${1:-}" = --release ]; then
  rm -f "$rundir/users/${2:?stop.sh --release PID}"
  for f in "$rundir"/users/*; do
    [ -e "$f" ] || continue
    if kill -0 "$(basename "$f")" 2>/dev/null; then
      echo "slurm: left running: still used by test run $(basename "$f")"
      exit 0
    fi
    rm -f "$f"
  done
fi

stopped=()
stop_pid() {  # name pidfile: TERM, up to 10 s, then KILL
  local name=$1 file=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  # The pid must still be that daemon (not a reused pid).
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    stopped+=("$name $pid")
  fi
  rm -f "$file"
}
stop_pid slurmd "$rundir/slurmd.pid"
stop_pid slurmctld "$rundir/slurmctld.pid"
stop_pid munged "$rundir/munged.pid"
if [ ${#stopped[@]} = 0 ]; then
  echo "slurm: stopped: nothing was running"
else
  echo "slurm: stopped: ${stopped[*]}"
fi
