#!/usr/bin/env bash
# A second sshd on every bed host, on port $TB_JUMP_PORT (2200), for SSH configurations as users
# have them (tests/liborchestra/test_ssh_config.py):
#   login:2200    reachable from anywhere, like login:22
#   nodeN:2200    only from login: `AllowUsers hpcuser@<login's address>`, so a node on this port
#                 is reached only through a ProxyJump chain (this machine -> login -> node);
#                 from anywhere else it refuses the user (Permission denied)
# Both read ~/.ssh/authorized_keys and ~/.ssh/authorized_keys.tests: a test may authorize a key
# of its own in the second file (and remove it after) without touching the file every other test
# relies on (up.sh rewrites authorized_keys on every run). The host keys are the hosts' own;
# $TB/ssh/known_hosts lists "[name]:2200,[ip]:2200" for each (written by up.sh).
#
#   jump-sshd.sh [start]   start whatever is not listening (idempotent; up.sh runs it)
#   jump-sshd.sh stop      stop these sshds only (down.sh needs nothing: they die with the hosts)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
tb_load_settings
[ "$(id -u)" = 0 ] || tb_die "jump-sshd.sh must run as root"
ACTION=${1:-start}
PORT=$TB_JUMP_PORT

listening() { # HOST
    nsenter --net="/run/netns/tb-$1" ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .
}

config() { # HOST
    local allow=""
    [ "$1" = login ] || allow="AllowUsers $TB_USER@$(tb_ip login)"
    tb_sshd_config "$1" 0.0.0.0 "$PORT" 64 100:30:200 "sshd-jump-$1" \
        ".ssh/authorized_keys .ssh/authorized_keys.tests" "$allow"
}

case "$ACTION" in
    start)
        started=""
        for h in $TB_HOSTS; do
            listening "$h" && continue
            file=$TB/etc/sshd_config-jump-$h
            config "$h" >"$file"
            /usr/sbin/sshd -t -f "$file"
            tb_on "$h" setsid -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
                /usr/sbin/sshd -f "$file" -E "$TB/log/sshd-jump-$h.log" \
                </dev/null >>"$TB/log/sshd-jump-$h.out" 2>&1
            started+=" $h"
        done
        for h in $started; do
            end=$(( $(date +%s) + TB_TIMEOUT ))
            until listening "$h"; do
                [ "$(date +%s)" -lt "$end" ] || tb_die "sshd on $h:$PORT does not listen (see $TB/log/sshd-jump-$h.log)"
                sleep 0.05
            done
        done
        [ -z "$started" ] || tb_log "jump sshd (:$PORT, nodes only from login) started on:$started"
        ;;
    stop)
        for h in $TB_HOSTS; do
            pid=$(cat "$TB/run/sshd-jump-$h.pid" 2>/dev/null) || continue
            # the pid file holds the host's namespace-local PID
            tb_init_pid "$h" >/dev/null && tb_on "$h" kill -TERM "$pid" 2>/dev/null || true
            rm -f "$TB/run/sshd-jump-$h.pid"
        done
        ;;
    *) tb_die "jump-sshd.sh: unknown action $ACTION (expected start or stop)" ;;
esac
