#!/usr/bin/env bash
# Single-node Ray head with 8 FAKE GPUs (+ accelerator_type:H100 resource) and the Ray Jobs REST API on 127.0.0.1:8265,
# for exportgate's end-to-end tests against the real Ray Jobs API (tests/test_real_ray.py).
# usage: ray.sh install|start|demo|stop
set -euo pipefail

BASE=${BASE:-/tmp/exportgate-peers}
VENV=${VENV:-$BASE/rayvenv}
RAYTMP=${RAYTMP:-$BASE/raytmp}       # keep Ray's session dir out of /tmp/ray
DASH_PORT=${DASH_PORT:-8265}
DASH=http://127.0.0.1:$DASH_PORT
export RAY_USAGE_STATS_ENABLED=0     # no phone-home
export PATH=$VENV/bin:$PATH

install_ray() {
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install 'ray[default]==2.60.0'   # [default] = dashboard + job server (REST API); pinned
  du -sh "$VENV"
}

start() {
  mkdir -p "$RAYTMP"
  ps -eo pid= > "$RAYTMP/pids.before"
  # --num-gpus=8 declares fake GPUs (no CUDA needed). The GPU *type* is a custom resource; Ray uses
  # the naming convention "accelerator_type:<TYPE>" (what it auto-detects on real GPU nodes).
  # RAY_JOB_START_TIMEOUT_SECONDS: jobs whose resources can never be satisfied stay PENDING (and ignore /stop)
  # until this timeout (default 900 s), then become FAILED.  RAY_AUTH_MODE=token (optional) protects the REST API.
  export RAY_JOB_START_TIMEOUT_SECONDS=${RAY_JOB_START_TIMEOUT_SECONDS:-60}
  if [ -n "${RAY_TOKEN:-}" ]; then export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$RAY_TOKEN; fi
  ray start --head --port=${RAY_GCS_PORT:-6380} --num-cpus=2 --num-gpus=8 \
      --resources='{"accelerator_type:H100": 8}' \
      --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --dashboard-port=$DASH_PORT \
      --object-store-memory=500000000 --temp-dir="$RAYTMP" --disable-usage-stats ${RAY_EXTRA_ARGS:-}
  for i in $(seq 60); do curl -fsS ${RAY_TOKEN:+-H "Authorization: Bearer $RAY_TOKEN"} "$DASH/api/version" >/dev/null 2>&1 && break; sleep 1; done
  # remember exactly which processes `ray start` left running, so stop() can kill them by PID
  # (keep only pids whose command line mentions the venv/temp dir or "ray", to avoid recording transient ps/sort pids)
  sleep 2
  for p in $(ps -eo pid= | tr -d ' ' | sort | comm -13 <(tr -d ' ' < "$RAYTMP/pids.before" | sort) -); do
    tr '\0' ' ' 2>/dev/null < /proc/$p/cmdline | grep -qE "$VENV|$RAYTMP|ray" && echo $p
  done > "$RAYTMP/pids"
  curl -sS ${RAY_TOKEN:+-H "Authorization: Bearer $RAY_TOKEN"} "$DASH/api/version"; echo
  ray status
}

demo() {  # submit a 2-GPU job via the Jobs REST API and poll it
  local AUTH=(); [ -n "${RAY_TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $RAY_TOKEN")
  local body
  body=$(cat <<'JSON'
{"entrypoint": "python -c \"import os,time,ray; ray.init(); print('CUDA_VISIBLE_DEVICES=', os.environ.get('CUDA_VISIBLE_DEVICES')); print('ray gpu ids', ray.get_gpu_ids()); print(ray.cluster_resources()); time.sleep(5)\"",
 "submission_id": null,
 "entrypoint_num_gpus": 2,
 "entrypoint_num_cpus": 0,
 "entrypoint_resources": {"accelerator_type:H100": 2},
 "runtime_env": {"env_vars": {"GW_REQUEST_ID": "req-123"}},
 "metadata": {"user": "alice", "account": "team-a", "time_limit_min": "10"}}
JSON
)
  echo ">>> POST $DASH/api/jobs/"; echo "$body"
  local resp; resp=$(curl -sS "${AUTH[@]}" -X POST "$DASH/api/jobs/" -H 'Content-Type: application/json' -d "$body"); echo "$resp"
  local id; id=$(echo "$resp" | python3 -c 'import sys,json; print(json.load(sys.stdin)["submission_id"])')
  for i in $(seq 60); do
    st=$(curl -sS "${AUTH[@]}" "$DASH/api/jobs/$id")
    echo "$st" | python3 -c 'import sys,json; d=json.load(sys.stdin); print({k:d.get(k) for k in ("submission_id","status","message","entrypoint_num_gpus","entrypoint_resources","metadata","driver_exit_code")})'
    case "$st" in *'"status": "SUCCEEDED"'*|*'"status":"SUCCEEDED"'*|*FAILED*|*STOPPED*) break;; esac
    sleep 2
  done
  echo ">>> GET $DASH/api/jobs/$id/logs"; curl -sS "${AUTH[@]}" "$DASH/api/jobs/$id/logs"; echo
}

descendants() {  # print the given pids plus all their descendants (by walking ppid links)
  ps -eo pid=,ppid= | awk -v roots="$*" 'BEGIN{n=split(roots,r," "); for(i=1;i<=n;i++) keep[r[i]]=1}
    {par[$1]=$2} END{ do { ch=0; for(p in par) if(!(p in keep) && (par[p] in keep)) {keep[p]=1; ch=1} } while(ch);
    for(p in keep) if (p in par) print p }'
}

stop() {  # kill only what start() launched (+ their children), by PID -- no `ray stop` (it matches by name)
  [ -s "$RAYTMP/pids" ] || { echo "no pid list"; return 0; }
  local pids; pids=$(descendants $(cat "$RAYTMP/pids") | grep -vxE "$$|$BASHPID" || true)
  [ -n "$pids" ] && kill $pids 2>/dev/null || true
  sleep 3
  pids=$(for p in $pids; do kill -0 $p 2>/dev/null && echo $p; done; true)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
  rm -f "$RAYTMP/pids"; echo "ray stopped"
}

case "${1:-}" in
  install) install_ray ;;
  start)   start ;;
  demo)    demo ;;
  stop)    stop ;;
  *) echo "usage: $0 install|start|demo|stop"; exit 2 ;;
esac
