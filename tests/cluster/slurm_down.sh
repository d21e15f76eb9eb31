#!/usr/bin/env bash
# Stops what tests/cluster/slurm_up.sh started (`make slurm-down`), in reverse order, and removes
# its state folder. A munged or /etc/slurm/slurm.conf it did not create is left alone; the
# Debian packages stay installed. Safe to run when nothing is up.
set -euo pipefail

STATE=${HDMAP_AD_SLURM_STATE:-/tmp/hdmap-ad-slurm}
ETC_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$STATE/slurm.conf
PATH=$PATH:/usr/sbin

log() { printf 'slurm-down: %s\n' "$*"; }

if [[ ! -f $STATE/started ]]; then
    log "nothing to stop (no $STATE/started)"
    exit 0
fi

stop_pid() {  # stop_pid NAME PIDFILE
    local name=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || { log "$name: no pid file"; return 0; }
    pid=$(cat "$pidfile")
    if ! kill -0 "$pid" 2>/dev/null; then log "$name: not running"; return 0; fi
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || { log "$name stopped"; return 0; }
        sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    log "$name killed"
}

# Jobs still queued or running belong to someone's Snakemake run (the regular suite's live test
# runs whenever this cluster is up): refuse unless forced, then cancel them so that slurmd leaves
# no job processes behind.
if [[ -f $STATE/slurmctld.pid ]] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null; then
    jobs=$(squeue -h -o '%i %j %T' 2>/dev/null || true)
    if [[ -n $jobs && ${HDMAP_AD_SLURM_FORCE:-0} != 1 ]]; then
        printf 'slurm-down: jobs still on the cluster (HDMAP_AD_SLURM_FORCE=1 to cancel them):\n%s\n' \
            "$jobs" >&2
        exit 1
    fi
    [[ -n $jobs ]] && scancel $(squeue -h -o '%i') 2>/dev/null || true
    sleep 1
fi

tac "$STATE/started" | while read -r what; do
    case $what in
        slurmd) stop_pid slurmd "$STATE/slurmd.pid" ;;
        slurmctld) stop_pid slurmctld "$STATE/slurmctld.pid" ;;
        slurmdbd) stop_pid slurmdbd "$STATE/slurmdbd.pid" ;;
        mariadb) stop_pid mariadb "$STATE/mariadb.pid" ;;
        munged) stop_pid munged "$STATE/munged.pid" ;;
        etc-link)
            if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$STATE/slurm.conf" ]]; then
                rm -f "$ETC_CONF" && log "removed $ETC_CONF"
            fi ;;
    esac
done
rm -rf "$STATE"
log "down (state $STATE removed)"
