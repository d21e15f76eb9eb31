#!/usr/bin/env bash
# A local single-node SLURM for exercising profiles/slurm for real (`make slurm-up`).
#
# This host is controller and only compute node (CPUs and memory read by `slurmd -C`), with two
# partitions, `cpu` (default) and `gpu`, both on that node, so the profile's partition names work
# unchanged. No cgroups: proctrack/linuxproc, task/none. Accounting runs (slurmdbd on a private
# MariaDB) because the Snakemake SLURM executor plugin reads job status with `sacct` whenever the
# `sacct` binary exists (it always does: it ships in slurm-client), and without slurmdbd `sacct`
# only says "Slurm accounting storage is disabled"; the plugin also checks the profile's
# `slurm_account` with `sacctmgr`. An account ($HDMAP_AD_SLURM_ACCOUNT, default `hdmap`) is
# created for the calling user.
#
# Idempotent: a second call finds its daemons running and only waits for the idle node. Installs
# missing Debian packages (slurm-wlm, munge, slurmdbd, mariadb-server; service auto-start is
# blocked during the install). Everything it starts is recorded under $HDMAP_AD_SLURM_STATE
# (default /tmp/hdmap-ad-slurm); `slurm_down.sh` stops exactly that. A munged that is already
# running is used, not restarted, and left alone by slurm_down.sh.
set -euo pipefail

STATE=${HDMAP_AD_SLURM_STATE:-/tmp/hdmap-ad-slurm}
ACCOUNT=${HDMAP_AD_SLURM_ACCOUNT:-hdmap}
CLUSTER=${HDMAP_AD_SLURM_CLUSTER:-hdmaplocal}
DB_PORT=${HDMAP_AD_SLURM_DB_PORT:-16819}
ETC_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$STATE/slurm.conf

log() { printf 'slurm-up: %s\n' "$*"; }
die() { printf 'slurm-up: ERROR: %s\n' "$*" >&2; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
started() { echo "$1" >> "$STATE/started"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2; shift 2
    for ((i = 0; i < secs * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out after ${secs}s waiting for $what"
}

[[ $(id -u) == 0 ]] || die "needs root (installs packages, runs slurmd); run it as root"

# --- packages -------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge \
            slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] \
        || need+=("${pair#*:}")
done
if ((${#need[@]})); then
    log "installing ${need[*]} (Debian packages)"
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # no service auto-start from postinst scripts
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-y -q -o DPkg::Lock::Timeout=900 --no-install-recommends)
    apt-get -q -o DPkg::Lock::Timeout=900 update >/dev/null
    apt-get install "${apt_opts[@]}" slurm-wlm munge slurmdbd mariadb-server >/dev/null
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
fi
PATH=$PATH:/usr/sbin

mkdir -p "$STATE"/{ctld,spool,log}
touch "$STATE/started"
host=$(hostname -s)

# --- already up? ----------------------------------------------------------------------------
node_idle() { [[ $(sinfo -h -N -o '%T' 2>/dev/null | head -1) == idle ]]; }
if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && alive "$STATE/slurmdbd.pid"; then
    log "already running (state in $STATE)"
    wait_for 60 "an idle node" node_idle
    sinfo
    exit 0
fi

# --- munge ----------------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running: using it"
else
    [[ -s /etc/munge/munge.key ]] || { mungekey --create --force 2>/dev/null \
        || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid" 2>/dev/null || true
    started munged
    wait_for 20 munged bash -c 'munge -n | unmunge'
    log "munged started"
fi

# --- private MariaDB for slurmdbd (loopback, port $DB_PORT) ----------------------------------
DB=$STATE/db
SOCK=$STATE/mariadb.sock
if ! alive "$STATE/mariadb.pid"; then
    if [[ ! -d $DB/mysql ]]; then
        mariadb-install-db --no-defaults --datadir="$DB" --user=root --skip-test-db \
            --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed: see $STATE/log/mariadb-install.log"
    fi
    setsid nohup mariadbd --no-defaults --datadir="$DB" --socket="$SOCK" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="$STATE/mariadb.pid" --user=root \
        --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --log-error="$STATE/log/mariadb.log" >/dev/null 2>&1 < /dev/null &
    started mariadb
    wait_for 60 "MariaDB" mariadb-admin --no-defaults -S "$SOCK" -u root ping
    log "MariaDB started on 127.0.0.1:$DB_PORT"
fi
DB_PASS_FILE=$STATE/db.pass
[[ -s $DB_PASS_FILE ]] || (umask 077; head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' \
    > "$DB_PASS_FILE")
DB_PASS=$(cat "$DB_PASS_FILE")
mariadb --no-defaults -S "$SOCK" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL

# --- slurm.conf / slurmdbd.conf --------------------------------------------------------------
read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    print v["CPUs"], v["RealMemory"] }')
[[ -n $cpus && -n $mem ]] || die "could not read CPUs/RealMemory from 'slurmd -C'"
mem=$((mem * 9 / 10))  # leave the OS some headroom
cat > "$STATE/slurm.conf" <<EOF
# written by tests/cluster/slurm_up.sh: single node, $host is controller and compute node
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
(umask 077; cat > "$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
# plain `sinfo`/`squeue`/`sacct` (and the jobs) find the config at the default path
if [[ ! -e $ETC_CONF && ! -L $ETC_CONF ]]; then
    mkdir -p /etc/slurm && ln -s "$STATE/slurm.conf" "$ETC_CONF" && started etc-link
elif [[ $(readlink -f "$ETC_CONF") != "$STATE/slurm.conf" ]]; then
    log "note: $ETC_CONF belongs to another setup; export SLURM_CONF=$STATE/slurm.conf"
fi

# --- daemons --------------------------------------------------------------------------------
if ! alive "$STATE/slurmdbd.pid"; then
    slurmdbd && started slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster
    log "slurmdbd started"
fi
if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
fi
user=$(id -un "${SUDO_USER:-root}")
if ! sacctmgr -n -P show assoc cluster="$CLUSTER" account="$ACCOUNT" user="$user" \
        format=account | grep -qx "$ACCOUNT"; then
    sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" \
        description="hdmap-ad local test" organization=local >/dev/null || true
    sacctmgr -i -Q add user "$user" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null || true
fi
if ! alive "$STATE/slurmctld.pid"; then
    slurmctld && started slurmctld
    wait_for 60 slurmctld scontrol ping
    log "slurmctld started"
fi
if ! alive "$STATE/slurmd.pid"; then
    slurmd && started slurmd
    log "slurmd started"
fi
for _ in $(seq 120); do
    node_idle && break
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -1)
    [[ $state == down* || $state == drain* ]] \
        && scontrol update nodename="$host" state=resume 2>/dev/null || true
    sleep 0.5
done
node_idle || die "node not idle: $(sinfo -N -o '%N %T %E' 2>&1)"
log "up: cluster $CLUSTER, node $host ($cpus CPUs, $mem MB), account $ACCOUNT, state in $STATE"
sinfo
