#!/usr/bin/env bash
# Tear the test bed down and leave nothing behind: every daemon and process of the bed (hosts,
# munged, mariadbd, the stock sshd, the user's leftover processes), the namespaces, the bridge,
# the /etc/hosts block, the generated /etc/slurm files, /opt/pbs-compat, Slurm's cgroups and
# the state dir. Idempotent: succeeds when nothing is up. Packages and the user account stay.
#   down.sh [--quiet] [--purge]
# --purge also removes what the bed keeps between runs, so that the next up.sh starts like on a
# new machine: the download cache ($TB_CACHE), the Grid Engine spool and cell, the test user and
# its home (with everything the tests left in it). Only Debian packages stay.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
tb_load_settings

QUIET=0 PURGE=0
for arg in "$@"; do
    case "$arg" in
        --quiet) QUIET=1 ;;
        --purge) PURGE=1 ;;
        *) tb_die "down.sh: unknown argument $arg (expected --quiet or --purge)" ;;
    esac
done
[ "$(id -u)" = 0 ] || tb_die "down.sh must run as root"
tb_serialize "$HERE/down.sh" "$@"
cd /

T0=$(date +%s%N)
say() { [ "$QUIET" = 1 ] || tb_log "$*"; }

# refuse to rm -rf anything that is not clearly a dedicated state dir
case "$TB" in
    /*/*) ;;
    *) tb_die "refusing to use TB=$TB (must be an absolute path at least two levels deep)" ;;
esac

comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }

# --- the hosts: SIGKILL each init (its whole PID namespace dies with it: every daemon of the
#     host, the second sshd of jump-sshd.sh included), then everything
#     else that still lives in the host's network namespace (e.g. `ip netns exec` commands)
hosts=" $TB_HOSTS "
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in tb-*) [[ "$hosts" == *" ${ns#tb-} "* ]] || hosts+="${ns#tb-} " ;; esac
done
killed=()
for h in $hosts; do
    if pid=$(tb_init_pid "$h"); then
        kill -KILL "$pid" 2>/dev/null || true
        killed+=("$pid")
    fi
done
for h in $hosts; do
    [ -e "/run/netns/tb-$h" ] || continue
    for pid in $(ip netns pids "tb-$h" 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
        killed+=("$pid")
    done
done

# --- daemons of the root namespace (checked by name before they are signalled)
term_pidfile() { # PIDFILE NAME
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    if tb_alive "$pid" && [ "$(comm_of "$pid")" = "$2" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        killed+=("$pid")
    fi
}
# the accounting database goes with the bed (slurmdbd is dead by now)
mpid=$(cat "$TB/run/mariadbd.pid" 2>/dev/null || true)
if tb_alive "$mpid" && [ "$(comm_of "$mpid")" = mariadbd ]; then
    mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' >/dev/null 2>&1 || true
fi
# PostgreSQL (shared search stores): a fast shutdown (SIGINT) disconnects its clients
pgpid=$(head -n 1 "$TB/pg/postmaster.pid" 2>/dev/null || true)
if tb_alive "$pgpid" && [ "$(comm_of "$pgpid")" = postgres ]; then
    kill -INT "$pgpid" 2>/dev/null || true
    killed+=("$pgpid")
fi
term_pidfile "$TB/run/sshd-local.pid" sshd
term_pidfile "$TB/run/mariadbd.pid" mariadbd
term_pidfile /run/munge/munged.pid munged

# --- the test user's processes left in the root namespace (e.g. sessions of the stock sshd)
if id "$TB_USER" >/dev/null 2>&1; then
    for pid in $(ps -u "$TB_USER" -o pid= 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null || true
        killed+=("$pid")
    done
fi

# --- wait until they are gone (zombies count as gone: PID 1 reaps them lazily)
end=$(( $(date +%s) + 15 ))
while :; do
    left=()
    for pid in "${killed[@]}"; do tb_alive "$pid" && left+=("$pid"); done
    [ "${#left[@]}" -eq 0 ] && break
    if [ "$(date +%s)" -ge "$end" ]; then
        for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        sleep 0.5
        for pid in "${left[@]}"; do
            tb_alive "$pid" && tb_die "process $pid ($(comm_of "$pid")) does not die"
        done
        break
    fi
    sleep 0.05
done
[ "${#killed[@]}" -gt 0 ] && say "stopped ${#killed[@]} processes"

# --- namespaces, veths, bridge
for f in "$TB"/ns/*.uts; do
    [ -e "$f" ] || continue
    mountpoint -q "$f" 2>/dev/null && umount "$f"
done
for h in $hosts; do
    [ -e "/run/netns/tb-$h" ] && ip netns del "tb-$h"
    # deleting the namespace deletes its veth too, in the background: it may vanish between
    # the look and the delete ("Cannot find device" failed a CI run), which is no failure
    if ip link show "tbv-$h" >/dev/null 2>&1; then
        ip link del "tbv-$h" 2>/dev/null || ! ip link show "tbv-$h" >/dev/null 2>&1
    fi
done
ip link show "$TB_BRIDGE" >/dev/null 2>&1 && ip link del "$TB_BRIDGE"

# --- Slurm's cgroups (proctrack/cgroup makes slurm_<node>/uid_*/job_*/step_* under each controller)
for d in /sys/fs/cgroup/*/slurm /sys/fs/cgroup/*/slurm_*; do
    [ -d "$d" ] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ -d "$d" ] || break
        sleep 0.1
    done
    [ -d "$d" ] && echo "[testbed] warning: could not remove cgroup $d" >&2
done

# --- files
if grep -q '^# BEGIN testbed' /etc/hosts; then
    tmp=$(mktemp)
    sed '/^# BEGIN testbed/,/^# END testbed/d' /etc/hosts >"$tmp"
    cat "$tmp" >/etc/hosts
    rm -f "$tmp"
fi
for f in /etc/slurm/slurm.conf /etc/slurm/cgroup.conf /etc/slurm/slurmdbd.conf; do
    [ -f "$f" ] && head -n 1 "$f" | grep -q 'generated by tests/testbed/up.sh' && rm -f "$f"
done
if [ -d "$TB_PBS_BIN" ]; then
    rm -rf "$TB_PBS_BIN"
    rmdir "$(dirname "$TB_PBS_BIN")" 2>/dev/null || true
fi
rm -rf "$TB"
rmdir "$(dirname "$TB")" 2>/dev/null || true

if [ "$PURGE" = 1 ]; then
    case "$TB_CACHE" in
        /*/*) rm -rf "$TB_CACHE" ;;
        *) tb_die "refusing to purge TB_CACHE=$TB_CACHE (must be an absolute path at least two levels deep)" ;;
    esac
    # Grid Engine: up.sh re-creates the cell (init_cluster) and the spool on a fresh bed
    rm -rf /var/spool/gridengine/spooldb /var/spool/gridengine/qmaster /var/spool/gridengine/execd \
        /var/lib/gridengine/default
    case "$TB_USER" in
        ''|root|*/*) tb_die "refusing to purge user '$TB_USER'" ;;
    esac
    if id "$TB_USER" >/dev/null 2>&1; then
        userdel -r "$TB_USER" >/dev/null 2>&1 || userdel "$TB_USER"
    fi
    rm -rf "/home/$TB_USER"
    say "purged: $TB_CACHE, grid engine spool and cell, user $TB_USER and its home"
fi

say "test bed down in $(( ($(date +%s%N) - T0) / 1000000 )) ms"
