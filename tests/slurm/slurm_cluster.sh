#!/usr/bin/env bash
# A throw-away single-node SLURM cluster for tests (Debian 12, no systemd, run as root).
#
#   tests/slurm/slurm_cluster.sh install   apt-get the packages (munge, slurmctld, slurmd, slurm-client,
#                                          slurmdbd, mariadb-server) if they are missing
#   tests/slurm/slurm_cluster.sh up        install if needed, write the configs, start every daemon, wait until
#                                          the node is idle, create the test account
#   tests/slurm/slurm_cluster.sh down      stop every daemon by the PID in its pid file (command name checked
#                                          first); never by name
#   tests/slurm/slurm_cluster.sh status    daemons, node state, queue
#
# Environment:
#   SLURM_TEST_ACCOUNT     account created for the test jobs (default ru_test)
#   SLURM_TEST_PARTITION   partition name (default debug)
#   SLURM_TEST_ACCOUNTING  1 = slurmdbd + MariaDB so that `sacct` works (default); 0 = no accounting
#                          (then run snakemake with --slurm-status-command squeue)
#
# Why these settings (see docs/cluster.md, "SLURM"): without systemd the cgroup plugins abort every
# batch step while reporting it COMPLETED, so proctrack/linuxproc + task/none; the snakemake executor plugin
# polls `sacct` by default, which needs slurmdbd; MinJobAge >= 120 keeps finished jobs visible to squeue.
set -euo pipefail

ACCOUNT=${SLURM_TEST_ACCOUNT:-ru_test}
PARTITION=${SLURM_TEST_PARTITION:-debug}
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-1}
HOST=$(hostname -s)
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB_USER=slurm
DB_PASS=slurm_test_pw   # local test database bound to 127.0.0.1 only
DB_NAME=slurm_acct_db

PID_SLURMD=/run/slurmd.pid
PID_SLURMCTLD=/run/slurmctld.pid
PID_SLURMDBD=/run/slurmdbd.pid
PID_MYSQLD=/run/mysqld/mysqld.pid
PID_MUNGED=/run/munge/munged.pid

log() { echo "[slurm_cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

wait_for() {  # wait_for <seconds> <description> <command...>
  local secs=$1 what=$2; shift 2
  local i
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${secs}s waiting for ${what}"
}

have_packages() {
  local b
  for b in /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch; do
    [[ -x $b ]] || return 1
  done
  if [[ $ACCOUNTING == 1 ]]; then
    [[ -x /usr/sbin/slurmdbd && -x /usr/sbin/mariadbd ]] || return 1
  fi
  return 0
}

cmd_install() {
  if have_packages; then log "packages present"; return 0; fi
  [[ $(id -u) == 0 ]] || die "must run as root to install packages"
  command -v apt-get >/dev/null || die "apt-get not available"
  local pkgs=(munge slurmctld slurmd slurm-client)
  [[ $ACCOUNTING == 1 ]] && pkgs+=(slurmdbd mariadb-server)
  log "apt-get install ${pkgs[*]}"
  apt-get update -q >&2
  # the package scripts print "policy-rc.d denied execution of start": harmless, we start the daemons by hand
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >&2
}

# ---- configuration ------------------------------------------------------------------------------------------

node_line() {
  # CPUs/Boards/Sockets/Cores/Threads exactly as slurmd detects them; RealMemory ~85% of what it reports
  local first mem
  first=$(slurmd -C | head -n1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$first")
  mem=$((mem * 85 / 100))
  sed -e "s/RealMemory=[0-9]*/RealMemory=${mem}/" <<<"$first"
}

write_slurm_conf() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
  local acct_lines
  if [[ $ACCOUNTING == 1 ]]; then
    acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
  else
    acct_lines="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by tests/slurm/slurm_cluster.sh: single-node test cluster on ${HOST}.
ClusterName=rutest
SlurmctldHost=${HOST}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# cgroup plugins do not work without systemd / a mounted freezer: batch steps abort silently
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${PID_SLURMCTLD}
SlurmdPidFile=${PID_SLURMD}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
${acct_lines}
$(node_line) State=UNKNOWN
PartitionName=${PARTITION} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 644 "$CONF_DIR/slurm.conf"
}

write_slurmdbd_conf() {
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by tests/slurm/slurm_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=${DB_USER}
StoragePass=${DB_PASS}
StorageLoc=${DB_NAME}
PidFile=${PID_SLURMDBD}
LogFile=${LOG_DIR}/slurmdbd.log
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

# ---- daemons ------------------------------------------------------------------------------------------------

pid_alive() {  # pid_alive <pidfile> <expected command name>
  local pidfile=$1 name=$2 pid
  [[ -s $pidfile ]] || return 1
  pid=$(tr -dc '0-9' <"$pidfile")
  [[ -n $pid && -d /proc/$pid ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

start_munge() {
  if pid_alive "$PID_MUNGED" munged; then log "munged already running"; return 0; fi
  [[ -s /etc/munge/munge.key ]] || mungekey --create
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 20 "munge" bash -c 'munge -n | unmunge'
  log "munged up (pid $(cat $PID_MUNGED))"
}

start_mariadb() {
  if pid_alive "$PID_MYSQLD" mariadbd; then log "mariadbd already running"; return 0; fi
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >&2
  # setsid + nohup: the server must outlive this script and the test's process group
  setsid nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$PID_MYSQLD" \
    >"$LOG_DIR/mariadbd.out" 2>&1 </dev/null &
  wait_for 60 "mariadb" mariadb-admin ping
  mariadb -u root <<EOF
CREATE DATABASE IF NOT EXISTS ${DB_NAME};
CREATE USER IF NOT EXISTS '${DB_USER}'@'localhost' IDENTIFIED BY '${DB_PASS}';
CREATE USER IF NOT EXISTS '${DB_USER}'@'127.0.0.1' IDENTIFIED BY '${DB_PASS}';
GRANT ALL ON ${DB_NAME}.* TO '${DB_USER}'@'localhost';
GRANT ALL ON ${DB_NAME}.* TO '${DB_USER}'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
  log "mariadbd up (pid $(cat $PID_MYSQLD))"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_slurmdbd() {
  if pid_alive "$PID_SLURMDBD" slurmdbd; then log "slurmdbd already running"; return 0; fi
  /usr/sbin/slurmdbd
  wait_for 30 "slurmdbd on port 6819" port_open 6819
  log "slurmdbd up (pid $(cat $PID_SLURMDBD))"
}

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1; }

start_slurm() {
  if ! pid_alive "$PID_SLURMCTLD" slurmctld; then
    /usr/sbin/slurmctld
    wait_for 30 "slurmctld" scontrol ping
  fi
  if ! pid_alive "$PID_SLURMD" slurmd; then
    /usr/sbin/slurmd
  fi
  local i state=""
  for ((i = 0; i < 150; i++)); do
    state=$(node_state || true)
    case $state in
      idle | mixed | allocated) break ;;
      drain* | drng | down*)
        # a node drained by an earlier broken run: put it back into service
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  [[ $state == idle || $state == mixed || $state == allocated ]] || die "node ${HOST} is '${state}', not idle"
  log "slurmctld (pid $(cat $PID_SLURMCTLD)) and slurmd (pid $(cat $PID_SLURMD)) up; node ${state}"
}

add_account() {
  sacctmgr -i add cluster rutest >/dev/null 2>&1 || true
  sacctmgr -i add account "$ACCOUNT" >/dev/null 2>&1 || true
  sacctmgr -i add user root account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null 2>&1 || true
  sacctmgr -n -P show assoc user=root account="$ACCOUNT" format=account | grep -qx "$ACCOUNT" \
    || die "could not create SLURM account ${ACCOUNT}"
  log "account ${ACCOUNT} ready"
}

cmd_up() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  cmd_install
  write_slurm_conf
  start_munge
  if [[ $ACCOUNTING == 1 ]]; then
    write_slurmdbd_conf
    start_mariadb
    start_slurmdbd
  fi
  start_slurm
  [[ $ACCOUNTING == 1 ]] && add_account
  log "cluster up: partition=${PARTITION} account=${ACCOUNT} accounting=${ACCOUNTING}"
}

stop_pidfile() {  # stop_pidfile <pidfile> <expected command name>
  local pidfile=$1 name=$2 pid i
  if ! pid_alive "$pidfile" "$name"; then
    [[ -e $pidfile ]] && log "$name: stale or foreign pid file $pidfile, not touching the process"
    return 0
  fi
  pid=$(tr -dc '0-9' <"$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -d /proc/$pid ]] || return 0
    sleep 0.1
  done
  if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
    log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

cmd_down() {
  # order: compute daemon, controller, accounting daemon, database, authentication
  stop_pidfile "$PID_SLURMD" slurmd
  stop_pidfile "$PID_SLURMCTLD" slurmctld
  stop_pidfile "$PID_SLURMDBD" slurmdbd
  stop_pidfile "$PID_MYSQLD" mariadbd
  stop_pidfile "$PID_MUNGED" munged
  log "cluster down"
}

cmd_status() {
  local d
  for d in "$PID_MUNGED:munged" "$PID_MYSQLD:mariadbd" "$PID_SLURMDBD:slurmdbd" "$PID_SLURMCTLD:slurmctld" \
    "$PID_SLURMD:slurmd"; do
    if pid_alive "${d%%:*}" "${d##*:}"; then
      echo "${d##*:}: running (pid $(tr -dc '0-9' <"${d%%:*}"))"
    else
      echo "${d##*:}: stopped"
    fi
  done
  if pid_alive "$PID_SLURMCTLD" slurmctld; then
    echo "node: $(node_state)"
    squeue -h -o '%i %j %T %M' || true
  fi
}

case ${1:-} in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|up|down|status}" >&2; exit 2 ;;
esac
