#!/usr/bin/env bash
# Run COMMAND (as root) on a machine of its own as far as Slurm can tell: fresh mount, PID, network
# and UTS namespaces, a tmpfs over every folder Slurm and munge keep state in, and over the cgroup
# v1 freezer (so proctrack/cgroup fails as it does where the freezer is mounted but unusable).
# Everything started inside dies with the namespace; the Slurm of the machine is not touched.
#   bash tests/kits/slurm/isolated.sh bash tests/kits/slurm/start.sh
# Used by tests/e2e/test_slurm_smoke.py to try start.sh's fresh start and fallback next to a running Slurm.
set -uo pipefail
if [ "${1:-}" != --inside ]; then
  [ "$(id -u)" = 0 ] || { echo "isolated.sh: must run as root" >&2; exit 2; }
  exec unshare --mount --pid --fork --net --uts --mount-proc --propagation private bash "$0" --inside "$@"
fi
shift
ip link set lo up || exit 2
# Slurm resolves the host name with AI_ADDRCONFIG: a non-loopback address must exist.
ip link add wsv0 type veth peer name wsv1 && ip addr add 10.254.7.1/24 dev wsv0 && ip link set wsv0 up \
  && ip link set wsv1 up || { echo "isolated.sh: cannot make a network interface" >&2; exit 2; }
for dir in /run/watchdog-singleton-slurm /etc/slurm /var/lib/slurm /var/log/slurm /run/munge /var/lib/munge \
           /var/log/munge /sys/fs/cgroup/freezer; do
  mkdir -p "$dir" && mount -t tmpfs tmpfs "$dir" || { echo "isolated.sh: cannot mount a tmpfs on $dir" >&2; exit 2; }
done
chown munge:munge /var/lib/munge /var/log/munge && chmod 0700 /var/lib/munge /var/log/munge
"$@"
code=$?
for log in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
  [ "$code" = 0 ] || { echo "---- $log" >&2; tail -5 "$log" >&2; }
done
exit "$code"
