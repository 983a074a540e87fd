#!/usr/bin/env bash
# Two-node Slurm 22.05 (Debian bookworm packages) + slurmrestd (JWT): nodes g1 and g2, both slurmd
# on this one host (slurmd -N), each with 8 CPUs and 8 FAKE H100 GPUs; partitions `gpu` (default,
# both nodes) and `excl` (both nodes, OverSubscribe=EXCLUSIVE: every job gets whole nodes),
# for exportgate's end-to-end tests against the real slurmrestd (tests/test_real_slurm*.py).
# Everything (config, state, logs, munge socket/key, pids) lives under $BASE; nothing in /etc is edited.
#
# usage: [ACCT=1] slurm.sh install|start|token [user] [lifespan]|demo [user]|stop
set -euo pipefail

BASE=${BASE:-/tmp/exportgate-peers/slurm}
REST_PORT=${REST_PORT:-6820}   # slurmrestd listens on 127.0.0.1:$REST_PORT
CTLD_PORT=${CTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}        # slurmd of node g1
SLURMD_PORT2=${SLURMD_PORT2:-$((SLURMD_PORT + 100))}   # slurmd of node g2
NODE=$(hostname -s)                      # the host both slurmds run on (NodeHostname); hostname here is "vm"
NODES="g1 g2"                            # node names (slurmd -N NAME)
MUNGE=$BASE/munge
export SLURM_CONF=$BASE/etc/slurm.conf
ACCT=${ACCT:-0}                          # ACCT=1: also run MariaDB + slurmdbd (sacct, /slurmdb API, GPU TRES, account enforcement)
DBPORT=${DBPORT:-3307}

install_pkgs() {
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin munge curl jq
  [ "$ACCT" = 1 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmdbd mariadb-server
  true
}

write_config() {
  mkdir -p "$BASE"/{etc,state,spool,log} "$MUNGE"
  # --- munge: private key + socket under $BASE/munge, owned by the munge user
  if [ ! -s "$MUNGE/munge.key" ]; then
    dd if=/dev/urandom of="$MUNGE/munge.key" bs=1 count=1024 status=none
  fi
  chown -R munge:munge "$MUNGE"; chmod 755 "$MUNGE"; chmod 400 "$MUNGE/munge.key"   # socket dir must be o+x, key 0400
  # --- JWT HS256 key (read only by slurmctld; slurmrestd must NOT be able to read it)
  if [ ! -s "$BASE/state/jwt_hs256.key" ]; then
    dd if=/dev/urandom of="$BASE/state/jwt_hs256.key" bs=32 count=1 status=none
  fi
  chmod 600 "$BASE/state/jwt_hs256.key"

  cat > "$BASE/etc/slurm.conf" <<EOF
ClusterName=peers
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket.2
CredType=cred/munge
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$BASE/state/jwt_hs256.key
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.%n.log
# the nodes declare 8 CPUs each whatever this host has
SlurmdParameters=config_overrides
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in this sandbox
ProctrackType=proctrack/pgid
TaskPlugin=task/none
$( if [ "$ACCT" = 1 ]; then cat <<ACC
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# for slurmdbd connections the *client* takes its munge socket from AccountingStoragePass, not AuthInfo
AccountingStoragePass=$MUNGE/munge.socket.2
AccountingStorageTRES=gres/gpu,gres/gpu:h100
AccountingStorageEnforce=associations,limits,qos
ACC
else cat <<NOACC
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NOACC
fi )
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
NodeName=g1 NodeHostname=$NODE NodeAddr=127.0.0.1 Port=$SLURMD_PORT CPUs=8 Boards=1 SocketsPerBoard=2 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=4000 Gres=gpu:h100:8 State=UNKNOWN
NodeName=g2 NodeHostname=$NODE NodeAddr=127.0.0.1 Port=$SLURMD_PORT2 CPUs=8 Boards=1 SocketsPerBoard=2 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=4000 Gres=gpu:h100:8 State=UNKNOWN
PartitionName=gpu Nodes=g1,g2 Default=YES MaxTime=INFINITE State=UP
PartitionName=excl Nodes=g1,g2 OverSubscribe=EXCLUSIVE MaxTime=INFINITE State=UP
EOF
  # FAKE GPUs. Slurm 22.05 drops file-less GPUs ("Removing file-less GPU gpu:h100 from final GRES list")
  # and rejects regular files ("not a valid character or block device") -> symlinks to /dev/null.
  echo "AutoDetect=off" > "$BASE/etc/gres.conf"
  for n in $NODES; do
    mkdir -p "$BASE/dev/$n" "$BASE/spool/$n"
    for i in 0 1 2 3 4 5 6 7; do ln -sfn /dev/null "$BASE/dev/$n/nvidia$i"; done
    echo "NodeName=$n Name=gpu Type=h100 File=$BASE/dev/$n/nvidia[0-7]" >> "$BASE/etc/gres.conf"
  done
}

start_db() {  # private MariaDB (TCP 127.0.0.1:$DBPORT, datadir under $BASE) + slurmdbd
  mkdir -p "$BASE/db"
  if [ ! -d "$BASE/db/data/mysql" ]; then
    mkdir -p "$BASE/db/data"; chown -R mysql:mysql "$BASE/db"
    mariadb-install-db --user=mysql --datadir="$BASE/db/data" --auth-root-authentication-method=socket >"$BASE/log/mariadb-install.log" 2>&1
  fi
  chown -R mysql:mysql "$BASE/db"
  /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$BASE/db/data" --socket="$BASE/db/mysqld.sock" \
      --pid-file="$BASE/db/mysqld.pid" --port=$DBPORT --bind-address=127.0.0.1 \
      --log-error="$BASE/log/mariadb.err" --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
  for i in $(seq 60); do mariadb --no-defaults -S "$BASE/db/mysqld.sock" -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
  mariadb --no-defaults -S "$BASE/db/mysqld.sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
  cat > "$BASE/etc/slurmdbd.conf" <<EOF
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket.2
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$BASE/state/jwt_hs256.key
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/slurmdbd.pid
EOF
  chmod 600 "$BASE/etc/slurmdbd.conf"
  /usr/sbin/slurmdbd
  for i in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
}

seed_accounts() {  # cluster + accounts + users (associations) -- required because AccountingStorageEnforce=associations
  sacctmgr -i add cluster peers >/dev/null 2>&1 || true
  sacctmgr -i add account team-a,team-b Description=gw-test Organization=gw >/dev/null 2>&1 || true
  sacctmgr -i add user root Account=team-a >/dev/null 2>&1 || true
  sacctmgr -i add user nobody Account=team-b >/dev/null 2>&1 || true
  sacctmgr -n -p list assoc format=cluster,account,user,grptres || true
}

start() {
  write_config
  # munged (as the munge user, private socket)
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE/munge.socket.2" \
     --key-file="$MUNGE/munge.key" --pid-file="$MUNGE/munged.pid" \
     --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
  sleep 1
  munge -S "$MUNGE/munge.socket.2" -n | unmunge -S "$MUNGE/munge.socket.2" | grep -q STATUS:.*Success
  if [ "$ACCT" = 1 ]; then start_db; seed_accounts; fi
  /usr/sbin/slurmctld -f "$SLURM_CONF"       # daemonizes
  for n in $NODES; do /usr/sbin/slurmd -f "$SLURM_CONF" -N "$n"; done
  sleep 3
  # GPU TRES rows exist only after slurmctld registered AccountingStorageTRES with slurmdbd -> set GPU quota now
  if [ "$ACCT" = 1 ]; then sacctmgr -i modify account team-b set GrpTRES=gres/gpu=4 >/dev/null || true; fi
  # slurmrestd must not run as root / SlurmUser -> drop to nobody after binding the port.
  # SLURM_JWT=daemon is required for rest_auth/jwt (without it: 401 "Rejecting thread config token").
  SLURM_JWT=daemon nohup /usr/sbin/slurmrestd -f "$SLURM_CONF" -a rest_auth/jwt -s openapi/v0.0.38$([ "$ACCT" = 1 ] && echo ,openapi/dbv0.0.38) \
      -u nobody -g nogroup 127.0.0.1:$REST_PORT > "$BASE/log/slurmrestd.log" 2>&1 &
  echo $! > "$BASE/slurmrestd.pid"
  sleep 2
  for n in $NODES; do scontrol update nodename=$n state=resume 2>/dev/null || true; done   # in case an old run left them drained
  for i in $(seq 30); do [ "$(sinfo -h -p gpu -t idle -o %D)" = 2 ] && break; sleep 1; done
  sinfo -o '%P %N %T %c %G'
}

token() {  # prints  SLURM_JWT=<token>
  scontrol token username=${1:-root} lifespan=${2:-3600}
}

demo() {  # submit a 2-GPU job through slurmrestd as user $1 (default root) and poll it
  local user=${1:-root} api=http://127.0.0.1:$REST_PORT/slurm/v0.0.38
  local tok; tok=$(scontrol token username=$user lifespan=600 | cut -d= -f2)
  local H=(-H "X-SLURM-USER-NAME: $user" -H "X-SLURM-USER-TOKEN: $tok" -H "Content-Type: application/json")
  mkdir -p "$BASE/jobs"; chmod 1777 "$BASE/jobs"
  local body
  body=$(cat <<JSON
{"job": {"name": "gw-demo", "partition": "gpu", "account": "team-a", "time_limit": 10,
         "tasks": 1, "gpus": "h100:2",
         "current_working_directory": "$BASE/jobs", "standard_output": "$BASE/jobs/%j.out",
         "environment": {"PATH": "/usr/bin:/bin"}},
 "script": "#!/bin/bash\necho CUDA_VISIBLE_DEVICES=\$CUDA_VISIBLE_DEVICES; sleep 5"}
JSON
)
  echo ">>> POST $api/job/submit"; echo "$body"
  local resp; resp=$(curl -sS -X POST "${H[@]}" -d "$body" "$api/job/submit"); echo "$resp" | jq -c .
  local id; id=$(echo "$resp" | jq -r .job_id)
  for i in $(seq 30); do
    st=$(curl -sS "${H[@]}" "$api/job/$id" | jq -c '.jobs[0] | {job_id,user_name,account,job_state,state_reason,time_limit,tres_per_job,tres_per_node,gres_detail,exit_code}')
    echo "$st"
    case "$st" in *COMPLETED*|*FAILED*|*CANCELLED*|*TIMEOUT*) break;; esac
    sleep 2
  done
  cat "$BASE/jobs/$id.out"
}

stop() {
  # end this cluster's jobs first: a slurmstepd whose slurmd is gone lingers after its job
  if [ -s "$BASE/slurmctld.pid" ] && kill -0 "$(cat "$BASE/slurmctld.pid")" 2>/dev/null; then
    scancel --full $(squeue -h -o %A 2>/dev/null) 2>/dev/null || true
    for i in $(seq 10); do [ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for f in $BASE/slurmrestd.pid $BASE/slurmd.g1.pid $BASE/slurmd.g2.pid $BASE/slurmd.pid $BASE/slurmctld.pid $BASE/slurmdbd.pid $BASE/db/mysqld.pid $MUNGE/munged.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
      for i in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      echo "stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
  done
}

case "${1:-}" in
  install) install_pkgs ;;
  start)   start ;;
  token)   shift; token "$@" ;;
  demo)    shift; demo "$@" ;;
  stop)    stop ;;
  *) echo "usage: $0 install|start|token [user] [lifespan]|demo [user]|stop"; exit 2 ;;
esac
