# Settings and helpers of the test bed. Source it: `. tests/testbed/env.sh`.
# Every setting can be overridden from the environment.
# shellcheck shell=bash

: "${TB:=/tmp/testbed/cluster}"          # state dir: keys, configs, logs, pid files, spools
: "${TB_USER:=hpcuser}"                  # the cluster user (tests ssh in as this user)
: "${TB_NET:=10.250.0}"                  # /24 of the bed: .1 = bridge tb0, .10 = login, .11.. = nodes
: "${TB_NODES:=node1 node2 node3}"       # compute nodes
: "${TB_CPUS:=4}"                        # CPUs (Slurm) and slots (SGE) per node; fake, any number works
: "${TB_MEM:=2000}"                      # RealMemory (MB) per node
: "${TB_LOCAL_SSH_PORT:=2222}"           # stock-limits sshd on 127.0.0.1 in the root namespace (0 = none)
: "${TB_SGE:=1}"                         # Son of Grid Engine beside Slurm
: "${TB_ACCOUNTING:=1}"                  # MariaDB + slurmdbd, so that sacct works
: "${TB_PBS:=1}"                         # PBS-style wrappers (slurm-wlm-torque) in /opt/pbs-compat/bin
: "${TB_TIMEOUT:=60}"                    # seconds to wait for readiness
: "${TB_BRIDGE:=tb0}"
: "${TB_PBS_BIN:=/opt/pbs-compat/bin}"
: "${TB_CACHE:=/var/cache/testbed}"      # downloaded .deb of slurm-wlm-torque (kept across down)
: "${TB_PG_PORT:=55432}"                 # PostgreSQL on 127.0.0.1 (shared search stores; 0 = none)
: "${TB_JUMP_PORT:=2200}"                # second sshd per host (jump-sshd.sh); nodes accept it only from login
export TB TB_USER TB_NET TB_NODES TB_CPUS TB_MEM TB_LOCAL_SSH_PORT TB_SGE TB_ACCOUNTING TB_PBS \
       TB_TIMEOUT TB_BRIDGE TB_PBS_BIN TB_CACHE TB_PG_PORT TB_JUMP_PORT

TB_HOSTS="login $TB_NODES"

# tb_load_settings: take the settings the bed was brought up with (written by up.sh), so that
# down.sh and check.sh act on the bed that is there whatever the current environment says.
tb_load_settings() {
    if [ -f "$TB/run/settings.env" ]; then
        # shellcheck disable=SC1091
        . "$TB/run/settings.env"
        TB_HOSTS="login $TB_NODES"
    fi
}

# tb_ip HOST: address of a bed host (login = .10, the n-th node = .10+n).
tb_ip() {
    local h i=10
    for h in $TB_HOSTS; do
        if [ "$h" = "$1" ]; then echo "$TB_NET.$i"; return 0; fi
        i=$((i + 1))
    done
    echo "tb_ip: unknown host $1" >&2
    return 1
}

# tb_alive PID: true if the process exists and is not a zombie.
tb_alive() {
    local st
    [ -n "${1:-}" ] || return 1
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# tb_init_pid HOST: PID (root namespace) of the host's init, if it is alive.
tb_init_pid() {
    local pid
    pid=$(cat "$TB/run/init-$1.pid" 2>/dev/null) || return 1
    tb_alive "$pid" || return 1
    # guard against PID reuse: the init must live in the host's UTS namespace
    [ "$(readlink "/proc/$pid/ns/uts" 2>/dev/null)" = "$(cat "$TB/run/uts-$1.id" 2>/dev/null)" ] || return 1
    echo "$pid"
}

# tb_on HOST CMD...: run CMD inside HOST (its PID, mount, network and UTS namespaces).
tb_on() {
    local host=$1 pid
    shift
    pid=$(tb_init_pid "$host") || { echo "tb_on: host $host is not up (run tests/testbed/up.sh)" >&2; return 1; }
    nsenter -t "$pid" --pid --mount --net --uts -- "$@"
}

# tb_as_user HOST CMD...: run CMD on HOST as TB_USER with a login shell (like an ssh session).
tb_as_user() {
    local host=$1
    shift
    tb_on "$host" runuser -l "$TB_USER" -c "$*"
}

# tb_ssh [-p PORT] HOST CMD...: OpenSSH client from the root namespace, as TB_USER, strict host keys.
tb_ssh() {
    local port=22 host
    if [ "$1" = -p ]; then port=$2; shift 2; fi
    host=$1
    shift
    ssh -p "$port" -i "$TB/ssh/id_ed25519" -o UserKnownHostsFile="$TB/ssh/known_hosts" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=5 \
        -o LogLevel=ERROR "$TB_USER@$host" "$@"
}

# tb_serialize SCRIPT ARGS...: re-run the calling script under a machine-wide lock, so that two
# up/down runs (e.g. two test workers reviving hosts) never interleave. The lock is released
# before the script runs daemons' children (flock --close), and nested calls (up.sh -> down.sh)
# do not lock again.
tb_serialize() {
    [ -n "${TB_LOCKED:-}" ] && return 0
    mkdir -p /run/lock
    TB_LOCKED=1 exec flock --close -w 600 /run/lock/testbed.lock "$@"
}

tb_log() { printf '[testbed] %s\n' "$*"; }
tb_die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }
