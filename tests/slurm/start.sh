#!/usr/bin/env bash
# Start a real single-node Slurm on this machine for the tests: bash tests/slurm/start.sh (as root).
# Installs Debian's slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf for this host,
# starts munged (as the munge user), slurmctld and slurmd (as root, in the background), records
# their pids in /run/watchdog-singleton-slurm/, and waits until the node is idle. Idempotent: when
# everything already runs with the same slurm.conf it only checks and prints the state line.
# Prints one line: "slurm: ready: ..." (exit 0) or "slurm: cannot start: ..." (exit 1).
# tests/slurm/stop.sh stops what this started; the packages stay installed.
set -uo pipefail

rundir=/run/watchdog-singleton-slurm
conf=/etc/slurm/slurm.conf
logdir=/var/log/slurm
deadline_s=${WATCHDOG_SINGLETON_SLURM_TIMEOUT:-60}

fail() { echo "slurm: cannot start: $*" >&2; exit 1; }
# alive PIDFILE NAME: the recorded pid runs and is that daemon (not a reused pid).
alive() { [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }

[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages and starts daemons)"

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
# setsid() included, is killed when the job ends) when a cgroup v1 freezer hierarchy is mounted;
# otherwise proctrack/linuxproc, which loses processes re-parented to init when the batch shell exits.
proctrack=proctrack/linuxproc
if [ "${WATCHDOG_SINGLETON_SLURM_PROCTRACK:-auto}" != linuxproc ] \
   && grep -q ' /sys/fs/cgroup/freezer cgroup .*freezer' /proc/mounts \
   && mkdir "/sys/fs/cgroup/freezer/ws-probe.$$" 2>/dev/null && rmdir "/sys/fs/cgroup/freezer/ws-probe.$$"; then
  proctrack=proctrack/cgroup
  cat >/etc/slurm/cgroup.conf.new <<'EOF2'
# Written by watchdog-singleton's tests/slurm/start.sh.
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF2
  mv /etc/slurm/cgroup.conf.new /etc/slurm/cgroup.conf
fi
new_conf=$(mktemp)
cat >"$new_conf" <<EOF
# Written by watchdog-singleton's tests/slurm/start.sh: a single-node test cluster.
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

conf_changed=
if ! cmp -s "$new_conf" "$conf"; then
  mkdir -p /etc/slurm
  install -m 0644 "$new_conf" "$conf"
  conf_changed=1
fi
rm -f "$new_conf"

# 4. The daemons: restarted when slurm.conf changed, started when not running.
stop_pid() {  # pidfile name
  if alive "$1" "$2"; then
    local pid; pid=$(cat "$1"); kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$1"
}
if [ -n "$conf_changed" ]; then
  stop_pid "$rundir/slurmd.pid" slurmd
  stop_pid "$rundir/slurmctld.pid" slurmctld
fi
if ! alive "$rundir/slurmctld.pid" slurmctld; then
  setsid /usr/sbin/slurmctld -D -i </dev/null >>"$logdir/slurmctld.out" 2>&1 &
  echo $! >"$rundir/slurmctld.pid"
fi
if ! alive "$rundir/slurmd.pid" slurmd; then
  setsid /usr/sbin/slurmd -D </dev/null >>"$logdir/slurmd.out" 2>&1 &
  echo $! >"$rundir/slurmd.pid"
fi

# 5. Wait for the node to be idle (resume it once if it comes up down or drained).
end=$(( $(date +%s) + deadline_s ))
resumed=
state=
while :; do
  kill -0 "$(cat "$rundir/slurmctld.pid")" 2>/dev/null || fail "slurmctld exited: $(tail -1 "$logdir/slurmctld.log" 2>/dev/null)"
  kill -0 "$(cat "$rundir/slurmd.pid")" 2>/dev/null || fail "slurmd exited: $(tail -1 "$logdir/slurmd.log" 2>/dev/null)"
  state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -1)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    down*|drain*|fail*)
      if [ -z "$resumed" ]; then
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 && resumed=1
      fi ;;
  esac
  [ "$(date +%s)" -ge "$end" ] && fail "node $host is '${state:-not reported}' after ${deadline_s}s (see $logdir/slurmctld.log, slurmd.log)"
  sleep 0.2
done
echo "slurm: ready: node $host $state, $cpus CPUs, partition debug, slurmctld $(cat "$rundir/slurmctld.pid"), slurmd $(cat "$rundir/slurmd.pid")"
