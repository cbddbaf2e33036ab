#!/usr/bin/env bash
# shellcheck disable=SC2016  # remote commands are single-quoted on purpose
# Smoke test of the test bed: one line per check; exits non-zero if any check fails.
# Runs as root in the root namespace, like the tests; the cluster commands run as the test user
# over SSH on `login`, like the library will.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
tb_load_settings

[ "$(id -u)" = 0 ] || tb_die "check.sh must run as root"
[ -f "$TB/run/up.ok" ] || tb_die "the test bed is not up: run tests/testbed/up.sh"

T0=$(date +%s%N)
PASS=0
FAIL=0
# a scratch dir in the user's (shared) home, removed at the end
SCRATCH=.testbed-check
tb_ssh login "rm -rf $SCRATCH && mkdir -p $SCRATCH" || tb_die "cannot ssh to login"

check() { # DESCRIPTION FUNCTION [ARGS...]: the function prints a detail and returns 0 if ok
    local what=$1 t0 out rc ms
    shift
    t0=$(date +%s%N)
    out=$("$@" 2>&1) && rc=0 || rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if [ "$rc" = 0 ]; then
        PASS=$((PASS + 1))
        printf '[check] ok   %-46s %5d ms  %s\n' "$what" "$ms" "$(echo "$out" | tail -n 1)"
    else
        FAIL=$((FAIL + 1))
        printf '[check] FAIL %-46s %5d ms\n' "$what" "$ms"
        echo "$out" | tail -n 8 | sed 's/^/             | /'
    fi
}

# poll CMD until it succeeds, at most SECONDS
poll() { # SECONDS CMD...
    local end=$(( $(date +%s) + $1 ))
    shift
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.2
    done
}

ssh_hostname() { # HOST
    local out
    out=$(tb_ssh "$1" hostname) || return 1
    echo "$out"
    [ "$out" = "$1" ]
}

hop() { # login -> node1 with the user's own key and known_hosts, as on a real cluster
    local out
    out=$(tb_ssh login 'ssh -o BatchMode=yes node1 hostname') || return 1
    echo "$out"
    [ "$out" = node1 ]
}

jump() { # root ns -> node1 through login (ProxyCommand: -o options do not reach a -J hop)
    local opts out
    opts="-i $TB/ssh/id_ed25519 -o UserKnownHostsFile=$TB/ssh/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
    # shellcheck disable=SC2086
    out=$(ssh $opts -o ProxyCommand="ssh $opts -W %h:%p $TB_USER@login" "$TB_USER@node2" hostname) || return 1
    echo "$out"
    [ "$out" = node2 ]
}

srun_n3() {
    local out
    out=$(tb_ssh login 'srun -N3 hostname | sort | tr "\n" " "') || return 1
    echo "$out"
    [ "$out" = "node1 node2 node3 " ]
}

salloc_scancel() {
    tb_ssh login 'set -e
        j=$(salloc --no-shell -N2 -t 5 2>&1 | sed -n "s/.*Granted job allocation \([0-9]*\).*/\1/p")
        [ -n "$j" ] || { echo "salloc gave no job id"; exit 1; }
        steps=$(srun --jobid="$j" -N2 hostname | sort | tr "\n" " ")
        scancel "$j"
        for i in $(seq 50); do [ -z "$(squeue -h -j "$j" 2>/dev/null)" ] && break; sleep 0.1; done
        [ -z "$(squeue -h -j "$j" 2>/dev/null)" ] || { echo "job $j still in squeue"; exit 1; }
        echo "job $j on: $steps, cancelled"'
}

sacct_failed() { # a batch job that exits 3 shows FAILED 3:0 in sacct
    tb_ssh login "set -e
        cd $SCRATCH
        j=\$(sbatch --parsable -o /dev/null --wrap 'exit 3')
        for i in \$(seq 100); do
            st=\$(sacct -n -X -P -j \$j -o State,ExitCode)
            [ \"\$st\" = 'FAILED|3:0' ] && { echo \"job \$j: \$st\"; exit 0; }
            sleep 0.1
        done
        echo \"job \$j: sacct says '\$st'\"; exit 1"
}

sge_qsub() { # a job of the user runs on a node
    tb_ssh login "set -e
        cd $SCRATCH
        qsub -sync y -cwd -b y -j y -o sge.out -N check hostname >/dev/null
        out=\$(cat sge.out)
        echo \"ran on \$out\"
        case \$out in node*) ;; *) exit 1 ;; esac"
}

sge_qstat_empty() {
    local out
    poll 15 eval '[ -z "$(tb_ssh login qstat -u "$TB_USER")" ]' || { tb_ssh login qstat; return 1; }
    echo "no jobs"
}

local_sshd() { # the stock-limits sshd in the root namespace
    local out eff
    out=$(tb_ssh -p "$TB_LOCAL_SSH_PORT" 127.0.0.1 'echo $USER@$(hostname)') || return 1
    eff=$(/usr/sbin/sshd -T -f "$TB/etc/sshd_config-local" | grep -E '^(maxsessions|maxstartups) ' | tr '\n' ' ')
    echo "$out, $eff"
    [ "$out" = "$TB_USER@$(hostname)" ] && [ "$eff" = "maxsessions 10 maxstartups 10:30:100 " ]
}

pbs_wrappers() {
    tb_ssh login "set -e
        cd $SCRATCH
        printf '#!/bin/bash\n#PBS -N pbscheck\n#PBS -l nodes=2:ppn=1,walltime=00:01:00\nhostname\n' >pbs.sh
        j=\$($TB_PBS_BIN/qsub pbs.sh)
        $TB_PBS_BIN/qstat -f \$j | grep -q 'Job_Name = pbscheck'
        for i in \$(seq 100); do
            [ \"\$($TB_PBS_BIN/qstat -f \$j | sed -n 's/.*job_state = //p')\" = C ] && break
            sleep 0.1
        done
        st=\$($TB_PBS_BIN/qstat -f \$j | sed -n 's/.*job_state = //p')
        echo \"job \$j: job_state \$st, output: \$(cat pbs.sh.o\$j 2>/dev/null)\"
        [ \"\$st\" = C ]"
}

squeue_empty() {
    local out
    poll 10 eval '[ -z "$(tb_ssh login squeue -h)" ]' || { tb_ssh login squeue; return 1; }
    echo "no jobs"
}

for h in $TB_HOSTS; do
    check "ssh $TB_USER@$h (strict known_hosts) hostname" ssh_hostname "$h"
done
check "login -> node1 ssh as $TB_USER" hop
check "root ns -> node2 through login (ProxyCommand)" jump
check "srun -N3 hostname (on login)" srun_n3
check "salloc --no-shell -N2 + srun --jobid + scancel" salloc_scancel
if [ "$TB_ACCOUNTING" = 1 ]; then
    check "sbatch 'exit 3' -> sacct FAILED|3:0" sacct_failed
fi
if [ "$TB_SGE" = 1 ]; then
    check "qsub -sync y as $TB_USER runs on a node" sge_qsub
    check "qstat empty" sge_qstat_empty
fi
if [ "$TB_LOCAL_SSH_PORT" != 0 ]; then
    check "stock sshd 127.0.0.1:$TB_LOCAL_SSH_PORT" local_sshd
fi
if [ "$TB_PBS" = 1 ]; then
    check "PBS-style qsub/qstat ($TB_PBS_BIN)" pbs_wrappers
fi
check "squeue empty" squeue_empty

tb_ssh login "rm -rf $SCRATCH" || true
ms=$(( ($(date +%s%N) - T0) / 1000000 ))
if [ "$FAIL" = 0 ]; then
    printf '[check] all %d checks ok (%d ms)\n' "$PASS" "$ms"
else
    printf '[check] %d of %d checks FAILED (%d ms)\n' "$FAIL" $((PASS + FAIL)) "$ms"
fi
[ "$FAIL" = 0 ]
