#!/usr/bin/env bash
# Start a real single-node Slurm on this machine for the tests: bash tests/kits/slurm/start.sh (as root).
# Installs Debian's slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf for this host,
# starts munged (as the munge user), slurmctld and slurmd (as root, in the background), records
# their pids in /run/watchdog-singleton-slurm/, waits until the node is idle, and proves its process
# tracking with a real job step (srun) before it says ready: proctrack/cgroup when a freezer
# hierarchy is mounted and a step runs under it, else proctrack/linuxproc.
# It never touches a Slurm it did not start: a slurmctld or slurmd it did not record, or a slurm.conf
# or cgroup.conf it did not write, and it leaves everything as it is and exits 3. A Slurm it started
# that still runs is only checked, never restarted or reconfigured (a test run may be using it; stop.sh
# then start.sh applies a new configuration).
# Prints one line: "slurm: ready: ..." (exit 0), "slurm: cannot start: ..." (exit 1) or
# "slurm: left alone: ..." (exit 3).
# tests/kits/slurm/stop.sh stops what this started; the packages stay installed.
set -uo pipefail

rundir=/run/watchdog-singleton-slurm
conf=/etc/slurm/slurm.conf
logdir=/var/log/slurm
deadline_s=${WATCHDOG_SINGLETON_SLURM_TIMEOUT:-60}

# The marker keeps the script's old path: slurm.conf files written before it moved are still ours.
marker="# Written by watchdog-singleton's tests/slurm/start.sh"

fail() { echo "slurm: cannot start: $*" >&2; exit 1; }
not_ours() { echo "slurm: left alone: $* (tests/kits/slurm/start.sh touches only a Slurm it started)" >&2; exit 3; }
# alive PIDFILE NAME: the recorded pid runs and is that daemon (not a reused pid).
alive() { [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }
# ours FILE: missing, or written by this script (its first line starts with our marker).
ours() { [ ! -e "$1" ] && return 0; case "$(head -1 "$1" 2>/dev/null)" in "$marker"*) return 0 ;; esac; return 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and starts daemons)"

# 0. A Slurm someone else runs or configured is theirs: no config written, no daemon started or stopped.
for daemon in slurmctld slurmd; do
  recorded=$(cat "$rundir/$daemon.pid" 2>/dev/null)
  for comm in /proc/[0-9]*/comm; do
    [ "$(cat "$comm" 2>/dev/null)" = "$daemon" ] || continue
    pid=${comm#/proc/}; pid=${pid%/comm}
    [ "$pid" = "$recorded" ] || not_ours "$daemon (pid $pid) runs and was not started by this script"
  done
done
for file in "$conf" /etc/slurm/cgroup.conf /etc/slurm-llnl/slurm.conf; do
  ours "$file" || not_ours "$file was not written by this script"
done
if [ -n "${SLURM_CONF:-}" ] && [ "$SLURM_CONF" != "$conf" ]; then
  not_ours "SLURM_CONF=$SLURM_CONF points at another configuration"
fi

# 1. Packages. policy-rc.d keeps the maintainer scripts from starting daemons we do not track.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  log=$(mktemp)
  apt-get update -qq >"$log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$log" 2>&1
  code=$?
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  if [ "$code" != 0 ]; then
    tail -5 "$log" >&2; rm -f "$log"
    fail "apt-get install slurm-wlm munge failed"
  fi
  rm -f "$log"
fi

mkdir -p "$rundir" "$logdir" /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
chown slurm:slurm /var/lib/slurm/slurmctld "$logdir" 2>/dev/null || fail "no slurm user (is slurm-wlm installed?)"

# 2. munge: the key (as Debian's postinst makes it) and munged as the munge user, /run/munge its runtime dir.
if [ ! -s /etc/munge/munge.key ]; then
  su munge -s /bin/sh -c 'mungekey -c' || fail "cannot create /etc/munge/munge.key"
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }; then
  su munge -s /bin/sh -c '/usr/sbin/munged' || fail "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || fail "munged started but munge -n | unmunge fails"
  cp /run/munge/munged.pid "$rundir/munged.pid"
fi

# 3. slurm.conf for this host: its real CPUs and layout (as slurmd -C sees them), RealMemory a little
# below what free -m shows.
host=$(hostname -s)
cpus=$(nproc)
layout=$(/usr/sbin/slurmd -C 2>/dev/null | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')
[ -n "$layout" ] || layout="CPUs=$cpus "
mem_total=$(free -m | awk '/^Mem:/ {print $2}')
real_mem=$(( mem_total * 9 / 10 ))
# Process tracking: proctrack/cgroup (what real clusters use: every process of a job, daemons that
# setsid() included, is killed when the job ends) when a cgroup v1 freezer hierarchy is mounted and
# writable, but only once a real job step has run under it (step 6): a mounted freezer is no proof
# (slurmstepd may still fail with "cgroup namespace 'freezer' not mounted" and drain the node).
# Otherwise proctrack/linuxproc, which loses processes re-parented to init when the batch shell exits.
proctrack=proctrack/linuxproc
if [ "${WATCHDOG_SINGLETON_SLURM_PROCTRACK:-auto}" != linuxproc ] \
   && grep -q ' /sys/fs/cgroup/freezer cgroup .*freezer' /proc/mounts \
   && mkdir "/sys/fs/cgroup/freezer/ws-probe.$$" 2>/dev/null && rmdir "/sys/fs/cgroup/freezer/ws-probe.$$"; then
  proctrack=proctrack/cgroup
fi
# write_conf: slurm.conf (and, for proctrack/cgroup, cgroup.conf) for $proctrack.
write_conf() {
  if [ "$proctrack" = proctrack/cgroup ]; then
    cat >/etc/slurm/cgroup.conf.new <<EOF2
$marker.
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF2
    mv /etc/slurm/cgroup.conf.new /etc/slurm/cgroup.conf
  else
    rm -f /etc/slurm/cgroup.conf
  fi
  local new_conf
  new_conf=$(mktemp)
  cat >"$new_conf" <<EOF
$marker: a single-node test cluster.
ClusterName=wstest
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# No cgroups in these sandboxes.
ProctrackType=${proctrack}
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Requeue on: the self-requeue pattern needs it (sbatch --requeue is passed explicitly anyway).
JobRequeue=1
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$rundir/slurmctld.daemon.pid
SlurmdPidFile=$rundir/slurmd.daemon.pid
SlurmctldLogFile=$logdir/slurmctld.log
SlurmdLogFile=$logdir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Quick turnaround for tests: finished jobs leave squeue after MinJobAge, a cancelled job gets
# SIGKILL KillWait seconds after SIGTERM, the scheduler looks at the queue often.
MinJobAge=10
KillWait=5
InactiveLimit=0
Waittime=0
SchedulerParameters=sched_interval=5,bf_interval=5
# A requeued job may start again only cred_expire + 1 seconds after the requeue (Slurm's default
# 120 s). 10 s keeps that wait (tests must still allow for it) and saves CI minutes; the credential
# only has to outlive a job launch on this one node. The minimum Slurm accepts is 5.
AuthInfo=cred_expire=${WATCHDOG_SINGLETON_SLURM_CRED_EXPIRE:-10}
NodeName=$host ${layout}RealMemory=$real_mem State=UNKNOWN
# OverSubscribe: many small test jobs share the few cores of a CI machine.
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16
EOF
  install -m 0644 "$new_conf" "$conf"
  rm -f "$new_conf"
}

# 4. The daemons.
stop_pid() {  # pidfile name
  if alive "$1" "$2"; then
    local pid; pid=$(cat "$1"); kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$1"
}
start_daemons() {
  if ! alive "$rundir/slurmctld.pid" slurmctld; then
    setsid /usr/sbin/slurmctld -D -i </dev/null >>"$logdir/slurmctld.out" 2>&1 &
    echo $! >"$rundir/slurmctld.pid"
  fi
  if ! alive "$rundir/slurmd.pid" slurmd; then
    setsid /usr/sbin/slurmd -D </dev/null >>"$logdir/slurmd.out" 2>&1 &
    echo $! >"$rundir/slurmd.pid"
  fi
}
# wait_idle: until the node is idle (resumed once if it comes up down or drained); sets $state,
# or returns 1 with the reason in $why.
wait_idle() {
  local end resumed=
  end=$(( $(date +%s) + deadline_s ))
  state=
  while :; do
    if ! kill -0 "$(cat "$rundir/slurmctld.pid")" 2>/dev/null; then
      why="slurmctld exited: $(tail -1 "$logdir/slurmctld.log" 2>/dev/null)"; return 1
    fi
    if ! kill -0 "$(cat "$rundir/slurmd.pid")" 2>/dev/null; then
      why="slurmd exited: $(tail -1 "$logdir/slurmd.log" 2>/dev/null)"; return 1
    fi
    state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -1)
    case "$state" in
      idle|mixed|allocated|completing) return 0 ;;
      down*|drain*|fail*)
        if [ -z "$resumed" ]; then
          scontrol update nodename="$host" state=resume >/dev/null 2>&1 && resumed=1
        fi ;;
    esac
    if [ "$(date +%s)" -ge "$end" ]; then
      why="node $host is '${state:-not reported}' after ${deadline_s}s (see $logdir/slurmctld.log, slurmd.log)"
      return 1
    fi
    sleep 0.2
  done
}
# prove: a real job step runs and prints under this configuration (a batch job uses the same
# process tracking, so a step that cannot start means every job would fail); else 1 and $why.
prove() {
  local out code
  out=$(cd / && timeout 60 srun --job-name=ws-proctrack-probe --nodes=1 --ntasks=1 --time=1 --quiet \
        /bin/echo proctrack-ok 2>&1)
  code=$?
  printf '%s\n' "$out" | grep -qx proctrack-ok && return 0
  why=$(printf '%s\n' "$out" | grep -v '^$' | tail -1)
  [ -n "$why" ] || why="srun exited $code"
  scancel --user=root --name=ws-proctrack-probe >/dev/null 2>&1
  return 1
}

# 5. A Slurm this script started that still runs: only checked, never restarted or rewritten.
if alive "$rundir/slurmctld.pid" slurmctld && alive "$rundir/slurmd.pid" slurmd; then
  wait_idle || fail "$why"
  current=$(sed -n 's/^ProctrackType=//p' "$conf")
  proven=
  [ "$(cat "$rundir/proctrack" 2>/dev/null)" = "$current" ] || proven=" (not proven by a job step: stop.sh, then start.sh)"
  echo "slurm: ready: node $host $state, $cpus CPUs, partition debug, $current$proven, slurmctld $(cat "$rundir/slurmctld.pid"), slurmd $(cat "$rundir/slurmd.pid") (already running)"
  exit 0
fi
# Half of ours (one daemon died): nobody can use it; start both afresh.
stop_pid "$rundir/slurmd.pid" slurmd
stop_pid "$rundir/slurmctld.pid" slurmctld
rm -f "$rundir/proctrack"

# 6. Start, wait for the node, and prove the process tracking with a job step. proctrack/cgroup
# that fails (daemons that do not come up, a step that does not run) falls back to
# proctrack/linuxproc; the failed step may have drained the node, and wait_idle resumes it.
write_conf
start_daemons
if ! { wait_idle && prove; }; then
  [ "$proctrack" = proctrack/linuxproc ] && fail "$why"
  echo "slurm: $proctrack failed ($why): falling back to proctrack/linuxproc" >&2
  stop_pid "$rundir/slurmd.pid" slurmd
  stop_pid "$rundir/slurmctld.pid" slurmctld
  proctrack=proctrack/linuxproc
  write_conf
  start_daemons
  wait_idle || fail "$why"
  prove || fail "a job step fails under proctrack/linuxproc too: $why"
fi
echo "$proctrack" >"$rundir/proctrack"
echo "slurm: ready: node $host $state, $cpus CPUs, partition debug, $proctrack (proven by a job step), slurmctld $(cat "$rundir/slurmctld.pid"), slurmd $(cat "$rundir/slurmd.pid")"
