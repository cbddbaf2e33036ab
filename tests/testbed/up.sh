#!/usr/bin/env bash
# Bring up the test bed: a small real cluster on this one machine (root, Debian 12, no systemd).
#
#   bridge tb0 10.250.0.1/24 (root namespace)
#   login  10.250.0.10   sshd :22, slurmctld, slurmdbd, sge_qmaster
#   node1..3 .11-.13      sshd :22, slurmd, sge_execd
#   root ns              munged, mariadbd (unix socket only), "stock" sshd on 127.0.0.1:2222
#
# Each host has its own network, UTS, PID and mount namespaces; the filesystem is shared
# (like an NFS /home). Settings: env.sh. See README.md.
#
# Re-running: if the bed is up (with the same settings), up.sh only repairs it: it restarts
# whatever died (e.g. a host killed by a fault test) and waits until everything is ready.
# Otherwise (not up, half up, or settings changed) it runs down.sh and builds a fresh cluster.
# For a guaranteed fresh cluster (job ids from 1, empty accounting): down.sh && up.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"

[ "$(id -u)" = 0 ] || tb_die "up.sh must run as root"
tb_serialize "$HERE/up.sh" "$@"
cd /

T0=$(date +%s%N)
elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)); }
step() { printf '[testbed] %6ss  %s\n' "$(elapsed)" "$*"; }

LOG=/dev/null
on_error() {
    local rc=$? line=$1
    printf '[testbed] ERROR: up.sh failed at line %s (exit %s)\n' "$line" "$rc" >&2
    if [ -f "$LOG" ]; then
        echo "[testbed] last lines of $LOG:" >&2
        tail -n 25 "$LOG" >&2
    fi
    exit "$rc"
}
trap 'on_error $LINENO' ERR

# A fingerprint of the settings: a bed that is up with other settings is rebuilt.
# (also read by tests/conftest.py to re-run up.sh with the same settings)
SETTINGS=$(for v in TB_USER TB_NET TB_NODES TB_CPUS TB_MEM TB_LOCAL_SSH_PORT TB_SGE TB_ACCOUNTING TB_PBS TB_PBS_BIN; do
    printf '%s=%q\n' "$v" "${!v}"
done)

MODE=fresh
if [ -f "$TB/run/up.ok" ]; then
    if [ "$(cat "$TB/run/settings.env" 2>/dev/null)" = "$SETTINGS" ]; then
        MODE=repair
    else
        step "settings changed since the last up: rebuilding"
    fi
fi
if [ "$MODE" = fresh ]; then
    # clean up a half-built or differently configured bed first
    if [ -d "$TB" ] || ip link show "$TB_BRIDGE" >/dev/null 2>&1 || grep -q '^# BEGIN testbed' /etc/hosts; then
        step "cleaning up a previous bed (down.sh)"
        "$HERE/down.sh" --quiet
    fi
fi

mkdir -p "$TB"/{run,log,etc,ns,ssh,slurm/state,slurm/spool,sge}
chmod 755 "$TB"
LOG=$TB/log/up.log
: >>"$LOG"
step "mode: $MODE (state dir $TB)"

# Run a command with its output in the log.
q() { "$@" >>"$LOG" 2>&1; }

# ---------------------------------------------------------------------------------------------
# /etc/hosts (first: the gridengine packages resolve the master's name when they configure)
# ---------------------------------------------------------------------------------------------
write_hosts() {
    local block h tmp
    block="# BEGIN testbed (tests/testbed/up.sh; removed by down.sh)"$'\n'
    for h in $TB_HOSTS; do block+="$(tb_ip "$h") $h"$'\n'; done
    block+="# END testbed"
    tmp=$(mktemp)
    sed '/^# BEGIN testbed/,/^# END testbed/d' /etc/hosts >"$tmp"
    printf '%s\n' "$block" >>"$tmp"
    # rewrite in place (keeps the inode, in case /etc/hosts is a bind mount)
    cmp -s "$tmp" /etc/hosts || cat "$tmp" >/etc/hosts
    rm -f "$tmp"
}
write_hosts

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
PKGS="openssh-server openssh-client munge slurmctld slurmd slurm-client procps iproute2 util-linux"
[ "$TB_ACCOUNTING" = 1 ] && PKGS+=" slurmdbd mariadb-server mariadb-client"
[ "$TB_SGE" = 1 ] && PKGS+=" gridengine-master gridengine-exec gridengine-client"
[ "$TB_PBS" = 1 ] && PKGS+=" libslurm-perl libslurmdb-perl libswitch-perl perl"
PKGS+=" chromium"
PKGS+=" git git-annex"
[ "$TB_PG_PORT" != 0 ] && PKGS+=" postgresql"

# shellcheck disable=SC2086
installed=$(dpkg-query -W -f='${Package} ${Status}\n' $PKGS 2>/dev/null | awk '/ install ok installed$/ {print $1}' || true)
missing=""
for p in $PKGS; do
    grep -qx "$p" <<<"$installed" || missing+=" $p"
done

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

if [ -n "$missing" ]; then
    step "installing Debian packages:$missing"
    if [ "$TB_SGE" = 1 ]; then
        # non-interactive Grid Engine configuration: cell "default", master "login"
        for p in gridengine-common gridengine-master gridengine-exec gridengine-client; do
            printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string login\n' \
                "$p" "$p" "$p"
        done | debconf-set-selections
    fi
    # keep package scripts from starting daemons (there is no init system to talk to anyway)
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    # apt-get update only if the package lists do not know our packages
    # shellcheck disable=SC2086
    if ! apt-cache show $missing >/dev/null 2>&1; then
        step "apt-get update"
        q apt-get update -q
    fi
    # shellcheck disable=SC2086
    if ! q apt_install $missing; then
        step "install failed; apt-get update and retry"
        q apt-get update -q
        # shellcheck disable=SC2086
        q apt_install $missing
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    step "packages installed"
fi

if [ "$TB_PBS" = 1 ]; then
    # slurm-wlm-torque conflicts with gridengine-client: unpack it, do not install it.
    # (the cache may not exist yet on a new machine: make it before looking into it)
    mkdir -p "$TB_CACHE"
    deb=$(find "$TB_CACHE" -maxdepth 1 -name 'slurm-wlm-torque_*.deb' | sort | tail -n 1)
    if [ -z "$deb" ]; then
        step "downloading slurm-wlm-torque (PBS-style wrappers)"
        if ! (cd "$TB_CACHE" && q apt-get download slurm-wlm-torque); then
            q apt-get update -q
            (cd "$TB_CACHE" && q apt-get download slurm-wlm-torque)
        fi
        deb=$(find "$TB_CACHE" -maxdepth 1 -name 'slurm-wlm-torque_*.deb' | sort | tail -n 1)
    fi
    if [ ! -x "$TB/pbs/usr/bin/qsub" ]; then
        dpkg -x "$deb" "$TB/pbs"
    fi
fi

# ---------------------------------------------------------------------------------------------
# user, keys, known_hosts
# ---------------------------------------------------------------------------------------------
if ! id "$TB_USER" >/dev/null 2>&1; then
    step "creating user $TB_USER"
    q useradd -m -s /bin/bash "$TB_USER"
fi
# '*' = no password, but not locked ('!' would make sshd refuse keys with UsePAM no)
[ "$(getent shadow "$TB_USER" | cut -d: -f2)" = '*' ] || q usermod -p '*' "$TB_USER"
USER_HOME=$(getent passwd "$TB_USER" | cut -d: -f6)
USER_GROUP=$(id -gn "$TB_USER")
# the account may have outlived its home (removed by hand): make it again
install -d -o "$TB_USER" -g "$USER_GROUP" -m 755 "$USER_HOME"

if [ ! -f "$TB/ssh/id_ed25519" ]; then
    q ssh-keygen -q -t ed25519 -N '' -C "$TB_USER@testbed" -f "$TB/ssh/id_ed25519"
fi
chmod 600 "$TB/ssh/id_ed25519"
for h in $TB_HOSTS local; do
    if [ ! -f "$TB/ssh/host-$h/ssh_host_ed25519_key" ]; then
        mkdir -p "$TB/ssh/host-$h"
        q ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$TB/ssh/host-$h/ssh_host_ed25519_key"
    fi
done
{
    for h in $TB_HOSTS; do
        echo "$h,$(tb_ip "$h") $(cut -d' ' -f1,2 "$TB/ssh/host-$h/ssh_host_ed25519_key.pub")"
        # the same host key on the second sshd (jump-sshd.sh)
        echo "[$h]:$TB_JUMP_PORT,[$(tb_ip "$h")]:$TB_JUMP_PORT $(cut -d' ' -f1,2 "$TB/ssh/host-$h/ssh_host_ed25519_key.pub")"
    done
    if [ "$TB_LOCAL_SSH_PORT" != 0 ]; then
        echo "[127.0.0.1]:$TB_LOCAL_SSH_PORT,[localhost]:$TB_LOCAL_SSH_PORT $(cut -d' ' -f1,2 "$TB/ssh/host-local/ssh_host_ed25519_key.pub")"
    fi
} >"$TB/ssh/known_hosts"
chmod 644 "$TB/ssh/known_hosts"

# the user's own ~/.ssh, so that login -> nodeN works as on a real cluster
install -d -o "$TB_USER" -g "$USER_GROUP" -m 700 "$USER_HOME/.ssh"
install -o "$TB_USER" -g "$USER_GROUP" -m 600 "$TB/ssh/id_ed25519" "$USER_HOME/.ssh/id_ed25519"
install -o "$TB_USER" -g "$USER_GROUP" -m 644 "$TB/ssh/id_ed25519.pub" "$USER_HOME/.ssh/id_ed25519.pub"
install -o "$TB_USER" -g "$USER_GROUP" -m 600 "$TB/ssh/id_ed25519.pub" "$USER_HOME/.ssh/authorized_keys"
install -o "$TB_USER" -g "$USER_GROUP" -m 644 "$TB/ssh/known_hosts" "$USER_HOME/.ssh/known_hosts"

# ---------------------------------------------------------------------------------------------
# configuration files
# ---------------------------------------------------------------------------------------------
for h in $TB_HOSTS; do
    tb_sshd_config "$h" 0.0.0.0 22 64 100:30:200 "sshd-$h" .ssh/authorized_keys \
        >"$TB/etc/sshd_config-$h"
done
if [ "$TB_LOCAL_SSH_PORT" != 0 ]; then
    # the stock limits of OpenSSH, written out, for back-pressure tests
    tb_sshd_config local 127.0.0.1 "$TB_LOCAL_SSH_PORT" 10 10:30:100 sshd-local \
        .ssh/authorized_keys >"$TB/etc/sshd_config-local"
fi
mkdir -p /run/sshd
chmod 755 /run/sshd

# shellcheck disable=SC2086
NODE_LIST=$(echo $TB_NODES | tr ' ' ',')
# shellcheck disable=SC2086
HOST_LIST=$(echo $TB_HOSTS | tr ' ' ',')
mkdir -p /etc/slurm
{
    cat <<EOF
# generated by tests/testbed/up.sh (removed by down.sh)
ClusterName=testbed
SlurmctldHost=login($(tb_ip login))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$TB/slurm/state
SlurmdSpoolDir=$TB/slurm/spool/%n
SlurmctldPidFile=$TB/run/slurmctld.pid
SlurmdPidFile=$TB/run/slurmd-%n.pid
SlurmctldLogFile=$TB/log/slurmctld.log
SlurmdLogFile=$TB/log/slurmd-%n.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# fake CPUs: accept CPUs=$TB_CPUS on a machine with fewer cores
SlurmdParameters=config_overrides
# start batch jobs at once; never put the word "defer" here (it queues every srun/salloc)
SchedulerParameters=batch_sched_delay=0
# reject impossible requests at submit time instead of pending forever
EnforcePartLimits=ALL
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
EOF
    if [ "$TB_ACCOUNTING" = 1 ]; then
        cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=login
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
EOF
    else
        cat <<EOF
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
    fi
    for h in $TB_NODES; do
        echo "NodeName=$h NodeAddr=$(tb_ip "$h") CPUs=$TB_CPUS RealMemory=$TB_MEM State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=short Nodes=$NODE_LIST Default=NO MaxTime=5 State=UP"
} >/etc/slurm/slurm.conf.new
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
for h in $TB_NODES; do mkdir -p "$TB/slurm/spool/$h"; done
chmod 644 /etc/slurm/slurm.conf

cat >/etc/slurm/cgroup.conf <<'EOF'
# generated by tests/testbed/up.sh (removed by down.sh)
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

if [ "$TB_ACCOUNTING" = 1 ]; then
    cat >/etc/slurm/slurmdbd.conf <<EOF
# generated by tests/testbed/up.sh (removed by down.sh)
AuthType=auth/munge
DbdHost=login
DbdPort=6819
SlurmUser=root
LogFile=$TB/log/slurmdbd.log
PidFile=$TB/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
fi

# ---------------------------------------------------------------------------------------------
# network: bridge + one netns per host (only 10.250.0.0/24 is routed; nothing leaves the machine)
# ---------------------------------------------------------------------------------------------
ip link show "$TB_BRIDGE" >/dev/null 2>&1 || ip link add "$TB_BRIDGE" type bridge
ip addr replace "$TB_NET.1/24" dev "$TB_BRIDGE"
ip link set "$TB_BRIDGE" up
for h in $TB_HOSTS; do
    ns=tb-$h
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        ip link del "tbv-$h" >/dev/null 2>&1 || true
        ip link add "tbv-$h" type veth peer name eth0 netns "$ns"
    fi
    ip link set "tbv-$h" master "$TB_BRIDGE" up
    ip -n "$ns" addr replace "$(tb_ip "$h")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # a persistent UTS namespace (bind-mounted on a file) with the host's name
    if ! mountpoint -q "$TB/ns/$h.uts" 2>/dev/null; then
        touch "$TB/ns/$h.uts"
        unshare --uts="$TB/ns/$h.uts" hostname "$h"
    fi
    nsenter --uts="$TB/ns/$h.uts" readlink /proc/self/ns/uts >"$TB/run/uts-$h.id"
done
[ "$MODE" = fresh ] && step "network up: $TB_BRIDGE $TB_NET.1/24, hosts: $TB_HOSTS"

# ---------------------------------------------------------------------------------------------
# hosts: each gets a PID + mount namespace whose init (PID 1) is a bash loop that reaps orphans
# ---------------------------------------------------------------------------------------------
INIT_SCRIPT='trap "" TERM INT HUP; while :; do sleep 3600 & wait $!; done'
start_init() { # HOST
    local h=$1 parent pid="" _
    setsid nsenter --net="/run/netns/tb-$h" --uts="$TB/ns/$h.uts" \
        unshare --pid --fork --mount-proc bash -c "$INIT_SCRIPT" </dev/null >/dev/null 2>&1 &
    parent=$!
    for _ in $(seq 500); do
        pid=$(pgrep -P "$parent" 2>/dev/null | head -n 1 || true)
        [ -n "$pid" ] && break
        sleep 0.01
    done
    [ -n "$pid" ] || tb_die "could not start the init of $h"
    echo "$pid" >"$TB/run/init-$h.pid"
}
revived=""
for h in $TB_HOSTS; do
    if ! tb_init_pid "$h" >/dev/null; then
        start_init "$h"
        revived+=" $h"
    fi
done
[ -n "$revived" ] && step "host namespaces started:$revived"

# Is something listening on TCP PORT in HOST's network namespace ("root" = root namespace)?
listening() { # HOST PORT
    if [ "$1" = root ]; then
        ss -Hltn "sport = :$2" 2>/dev/null | grep -q .
    else
        nsenter --net="/run/netns/tb-$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q .
    fi
}
wait_for() { # SECONDS DESCRIPTION CMD...
    local secs=$1 what=$2 end
    shift 2
    end=$(( $(date +%s) + secs ))
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || tb_die "timed out after ${secs}s waiting for $what (logs: $TB/log/)"
        sleep 0.05
    done
}
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SGE_ROOT=/var/lib/gridengine SGE_CELL=default)
# daemon HOST LOGNAME CMD...: start a (self-daemonizing) daemon inside HOST with a clean environment,
# in a session of its own: sge_execd daemonizes without setsid(), so it stayed in the session of
# whoever ran up.sh (a pytest run, a CI step) and died, silently, when that session was cleaned up.
daemon() {
    local h=$1 name=$2
    shift 2
    tb_on "$h" setsid -w "${DAEMON_ENV[@]}" "$@" </dev/null >>"$TB/log/$name.out" 2>&1
}

# ---------------------------------------------------------------------------------------------
# root namespace daemons: munged, mariadbd, stock sshd
# ---------------------------------------------------------------------------------------------
pid_alive() { tb_alive "$(cat "$1" 2>/dev/null)"; }
munge_ok() { pid_alive /run/munge/munged.pid && [ -S /run/munge/munge.socket.2 ]; }
if ! munge_ok; then
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        q mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged </dev/null >>"$TB/log/munged.out" 2>&1
    wait_for 10 munged munge_ok
    step "munged started"
fi

mariadb_ok() { mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1; }
if [ "$TB_ACCOUNTING" = 1 ] && ! mariadb_ok; then
    install -d -o mysql -g root -m 755 /run/mysqld
    # the package made the data dir when it was installed; make it again if it is gone
    if [ ! -d /var/lib/mysql/mysql ]; then
        install -d -o mysql -g mysql -m 755 /var/lib/mysql
        q mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db
    fi
    # no fsync: a throw-away database (this makes slurmdbd create its tables 2-3x faster)
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
        --innodb-flush-method=nosync --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
        --skip-log-bin --log-error="$TB/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    echo $! >"$TB/run/mariadbd.pid"
    wait_for 30 mariadbd mariadb_ok
    step "mariadbd started (unix socket only)"
fi
if [ "$TB_ACCOUNTING" = 1 ] && [ "$MODE" = fresh ]; then
    q mariadb <<'EOF'
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE DATABASE slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
fi

if [ "$TB_LOCAL_SSH_PORT" != 0 ] && ! listening root "$TB_LOCAL_SSH_PORT"; then
    q /usr/sbin/sshd -t -f "$TB/etc/sshd_config-local"
    "${DAEMON_ENV[@]}" /usr/sbin/sshd -f "$TB/etc/sshd_config-local" -E "$TB/log/sshd-local.log" \
        </dev/null >>"$TB/log/sshd-local.out" 2>&1
    step "stock sshd started on 127.0.0.1:$TB_LOCAL_SSH_PORT (MaxSessions 10, MaxStartups 10:30:100)"
fi

# PostgreSQL on 127.0.0.1:$TB_PG_PORT for shared search stores: password auth over TCP (user
# orchestra, database searches), a throw-away cluster in $TB/pg (no fsync).
PG_PASSWORD=orchestra-tests
if [ "$TB_PG_PORT" != 0 ] && ! listening root "$TB_PG_PORT"; then
    pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
    [ -n "$pg_bin" ] || tb_die "PostgreSQL is not installed (package postgresql)"
    install -d -o postgres -g postgres -m 755 "$TB/run/pg"
    if [ ! -f "$TB/pg/PG_VERSION" ]; then
        install -d -o postgres -g postgres -m 700 "$TB/pg"
        printf '%s\n' "$PG_PASSWORD" >"$TB/run/pg/pw"
        chown postgres "$TB/run/pg/pw"
        q runuser -u postgres -- "$pg_bin/initdb" -D "$TB/pg" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 --pwfile="$TB/run/pg/pw"
        rm -f "$TB/run/pg/pw"
    fi
    touch "$TB/log/postgres.log" && chown postgres "$TB/log/postgres.log"
    q runuser -u postgres -- setsid "$pg_bin/pg_ctl" -D "$TB/pg" -l "$TB/log/postgres.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $TB_PG_PORT -k $TB/run/pg -c fsync=off" start
    pg() { runuser -u postgres -- "$pg_bin/psql" -h "$TB/run/pg" -p "$TB_PG_PORT" -U postgres "$@"; }
    if [ "$(pg -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'orchestra'")" != 1 ]; then
        q pg -c "CREATE ROLE orchestra LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
        q pg -c "CREATE DATABASE searches OWNER orchestra"
    fi
    step "postgresql started on 127.0.0.1:$TB_PG_PORT (database searches, user orchestra)"
fi

# ---------------------------------------------------------------------------------------------
# sshd on every host
# ---------------------------------------------------------------------------------------------
started=""
for h in $TB_HOSTS; do
    if ! listening "$h" 22; then
        q /usr/sbin/sshd -t -f "$TB/etc/sshd_config-$h"
        daemon "$h" "sshd-$h" /usr/sbin/sshd -f "$TB/etc/sshd_config-$h" -E "$TB/log/sshd-$h.log"
        started+=" $h"
    fi
done
[ -n "$started" ] && step "sshd started on:$started"
# the second sshd on :$TB_JUMP_PORT (nodes: only from login), for ProxyJump chains
"$HERE/jump-sshd.sh" start | while read -r line; do step "${line#\[testbed\] }"; done

# ---------------------------------------------------------------------------------------------
# Son of Grid Engine
# ---------------------------------------------------------------------------------------------
SGE_ROOT=/var/lib/gridengine
SGE_CELL=default
SGE_SPOOL=/var/spool/gridengine
sge() { tb_on login "${DAEMON_ENV[@]}" "$@"; }   # an SGE admin command, as root on login

# start_execd HOST: start sge_execd on HOST. It writes its pid file only once it has registered
# with sge_qmaster, so sge_ok waits for that file (a stale one is removed first).
start_execd() {
    rm -f "$SGE_SPOOL/execd/$1/execd.pid"
    daemon "$1" "sge_execd-$1" /usr/sbin/sge_execd
}

start_sge() {
    local common h pe name rule slaves pid pids=() started=""
    if ! listening login 6444; then
        started+=" sge_qmaster@login"
        common=$SGE_ROOT/$SGE_CELL/common
        if [ "$MODE" = fresh ]; then
            # a fresh cluster each time: re-initialize the qmaster spool (as the package did)
            install -d -o sgeadmin -g sgeadmin -m 755 "$SGE_ROOT" "$SGE_ROOT/$SGE_CELL" "$common"
            [ -f "$common/bootstrap" ] ||
                install -m 644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$common/bootstrap"
            rm -rf "$SGE_SPOOL/spooldb" "$SGE_SPOOL/qmaster" "$SGE_SPOOL/execd"
            rm -f "$common/accounting" "$common/reporting"   # qacct starts empty too
            for d in "$SGE_SPOOL/qmaster" "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_SPOOL/execd"; do
                install -d -o sgeadmin -g sgeadmin -m 755 "$d"
            done
            q runuser -u sgeadmin -- /usr/share/gridengine/scripts/init_cluster \
                "$SGE_ROOT" "$SGE_CELL" "$SGE_SPOOL/spooldb" sgeadmin
        fi
        echo login >"$common/act_qmaster"
        chown sgeadmin:sgeadmin "$common/act_qmaster"
        daemon login sge_qmaster /usr/sbin/sge_qmaster
        wait_for 20 "sge_qmaster on login:6444" listening login 6444
        wait_for 20 "sge_qmaster answering" q sge qconf -sh
        if [ "$MODE" = fresh ]; then
            q sge qconf -ah "$HOST_LIST"   # admin hosts (execds register themselves)
            q sge qconf -as "$HOST_LIST"   # submit hosts
            # parallel environments: smp (all slots on one host), mpi (spread round robin)
            for pe in "smp \$pe_slots FALSE" "mpi \$round_robin TRUE"; do
                read -r name rule slaves <<<"$pe"
                cat >"$TB/sge/pe-$name" <<EOF
pe_name            $name
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $rule
control_slaves     $slaves
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
                q sge qconf -Ap "$TB/sge/pe-$name"
            done
            # queue all.q: TB_CPUS slots on every node, no load thresholds (the load is shared)
            cat >"$TB/sge/all.q" <<EOF
qname                 all.q
hostlist              $TB_NODES
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp mpi
rerun                 FALSE
slots                 $TB_CPUS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
            q sge qconf -Aq "$TB/sge/all.q"
            # scheduler: run every second, no load adjustments
            sge qconf -ssconf | sed -E \
                -e 's/^(schedule_interval[[:space:]]+).*/\10:0:1/' \
                -e 's/^(flush_submit_sec[[:space:]]+).*/\11/' \
                -e 's/^(flush_finish_sec[[:space:]]+).*/\11/' \
                -e 's/^(job_load_adjustments[[:space:]]+).*/\1NONE/' \
                -e 's/^(load_adjustment_decay_time[[:space:]]+).*/\10:0:0/' \
                >"$TB/sge/sconf"
            q sge qconf -Msconf "$TB/sge/sconf"
        fi
    fi
    # sge_execd takes ~1 s to daemonize: start them side by side
    for h in $TB_NODES; do
        if ! listening "$h" 6445; then
            start_execd "$h" &
            pids+=($!)
            started+=" sge_execd@$h"
        fi
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    [ -z "$started" ] || step "grid engine daemons started:$started"
}
if [ "$TB_SGE" = 1 ]; then
    # in the background, beside Slurm (each spends most of its start waiting)
    ( start_sge ) &
    SGE_JOB=$!
fi

# ---------------------------------------------------------------------------------------------
# Slurm
# ---------------------------------------------------------------------------------------------
started=""
if [ "$TB_ACCOUNTING" = 1 ] && ! listening login 6819; then
    daemon login slurmdbd /usr/sbin/slurmdbd
    started+=" slurmdbd@login"
    wait_for 20 "slurmdbd on login:6819" listening login 6819
fi
if ! listening login 6817; then
    if [ "$MODE" = fresh ]; then
        daemon login slurmctld /usr/sbin/slurmctld -i   # fresh: empty state dir, job ids from 1
    else
        daemon login slurmctld /usr/sbin/slurmctld      # repair: keep the state
    fi
    wait_for 20 "slurmctld on login:6817" listening login 6817
    started+=" slurmctld@login"
fi
for h in $TB_NODES; do
    if ! listening "$h" 6818; then
        daemon "$h" "slurmd-$h" /usr/sbin/slurmd -N "$h"
        started+=" slurmd@$h"
    fi
done
[ -n "$started" ] && step "slurm daemons started:$started"
if [ "$TB_SGE" = 1 ]; then
    wait "$SGE_JOB" || tb_die "grid engine failed to start (see $LOG)"
fi

# ---------------------------------------------------------------------------------------------
# PBS-style wrappers (slurm-wlm-torque, on top of Slurm) in /opt/pbs-compat/bin
# ---------------------------------------------------------------------------------------------
if [ "$TB_PBS" = 1 ]; then
    mkdir -p "$TB_PBS_BIN"
    for f in "$TB"/pbs/usr/bin/*; do
        ln -sfn "$f" "$TB_PBS_BIN/$(basename "$f")"
    done
    # the wrappers call sbatch & co. from their own directory
    for f in sbatch srun salloc scancel squeue scontrol sinfo sacct; do
        ln -sfn "/usr/bin/$f" "$TB_PBS_BIN/$f"
    done
fi

# ---------------------------------------------------------------------------------------------
# wait until ready
# ---------------------------------------------------------------------------------------------
ssh_ok() { # HOST: sshd answers with its host key and the right hostname
    [ "$(tb_ssh "$1" hostname 2>/dev/null)" = "$1" ]
}
all_ssh_ok() { # side by side: one ssh takes ~0.25 s
    local h pid pids=() rc=0
    for h in $TB_HOSTS; do
        ssh_ok "$h" &
        pids+=($!)
    done
    if [ "$TB_LOCAL_SSH_PORT" != 0 ]; then
        tb_ssh -p "$TB_LOCAL_SSH_PORT" 127.0.0.1 true >/dev/null 2>&1 &
        pids+=($!)
    fi
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return "$rc"
}
NODE_COUNT=$(echo "$TB_NODES" | wc -w)
slurm_ok() { # every node idle, mix or alloc, and responding (no flag: "idle*" = not responding)
    local n
    n=$(tb_on login sinfo -h -N -p debug -o '%N %t' 2>/dev/null | awk '$2 ~ /^(idle|mix|alloc)$/' | wc -l)
    [ "$n" -eq "$NODE_COUNT" ]
}
sge_ok() { # every execd runs and has registered; sge_qmaster sees every node healthy, with a load
    local h out
    for h in $TB_NODES; do
        # an execd may die while it registers (e.g. refused while sge_qmaster still holds the
        # connection of the execd a host kill left behind): start it again
        if ! listening "$h" 6445; then
            step "sge_execd@$h is not running: starting it again"
            start_execd "$h"
        fi
        [ -s "$SGE_SPOOL/execd/$h/execd.pid" ] || return 1
    done
    # sge_qmaster keeps reporting a dead execd's queue as fine for minutes (until max_unheard),
    # so the checks above come first. Every queue instance listed, in no state at all
    # (u = unknown, a = alarm, d = disabled, E = error...):
    out=$(sge qstat -f -q all.q 2>/dev/null) || return 1
    [ "$(awk '$1 ~ /^all\.q@/ && NF == 5' <<<"$out" | wc -l)" -eq "$NODE_COUNT" ] || return 1
    # and a load reported by every node
    out=$(sge qhost 2>/dev/null) || return 1
    for h in $TB_NODES; do
        awk -v h="$h" '$1 == h && $7 ~ /^[0-9.]+$/ { ok = 1 } END { exit !ok }' <<<"$out" || return 1
    done
}
wait_for "$TB_TIMEOUT" "sshd on every host" all_ssh_ok
step "sshd answering on: $TB_HOSTS"
wait_for "$TB_TIMEOUT" "slurm nodes idle (sinfo)" slurm_ok
step "slurm ready: $NODE_COUNT nodes idle in partition debug"
if [ "$TB_SGE" = 1 ]; then
    wait_for "$TB_TIMEOUT" "grid engine: every sge_execd registered, all.q healthy (qstat -f, qhost)" sge_ok
    step "grid engine ready: all.q on $NODE_COUNT exec hosts"
fi

# a description of the bed for the test fixtures (tests/conftest.py)
{
    printf '{\n  "dir": "%s",\n  "user": "%s",\n  "key": "%s",\n  "known_hosts": "%s",\n' \
        "$TB" "$TB_USER" "$TB/ssh/id_ed25519" "$TB/ssh/known_hosts"
    printf '  "local_port": %s,\n  "cpus": %s,\n  "sge": %s,\n  "accounting": %s,\n  "pbs": %s,\n' \
        "$TB_LOCAL_SSH_PORT" "$TB_CPUS" "$TB_SGE" "$TB_ACCOUNTING" "$TB_PBS"
    printf '  "pbs_bin": "%s",\n  "jump_port": %s,\n' "$TB_PBS_BIN" "$TB_JUMP_PORT"
    if [ "$TB_PG_PORT" != 0 ]; then
        printf '  "postgres": "postgresql://orchestra:%s@127.0.0.1:%s/searches",\n' \
            "$PG_PASSWORD" "$TB_PG_PORT"
    fi
    printf '  "hosts": {'
    sep=""
    for h in $TB_HOSTS; do printf '%s"%s": "%s"' "$sep" "$h" "$(tb_ip "$h")"; sep=", "; done
    printf '}\n}\n'
} >"$TB/testbed.json"
echo "$SETTINGS" >"$TB/run/settings.env"
touch "$TB/run/up.ok"
step "test bed up ($MODE) in $(elapsed) s"
