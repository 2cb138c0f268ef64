#!/usr/bin/env bash
# Starts a real multi-node Ray cluster on this machine: one `ray start --head` and N `ray start` workers, every node
# on 127.0.0.2 with its own ports (all picked free), one private temp folder, and fake GPU resources on the workers
# (Ray schedules num_gpus actors on them; there is no CUDA behind them, so run engines with engine.device: cpu).
# The step between the laptop and a cloud cluster: the same `ray job submit` / `serve deploy` commands, several raylets.
#
#   eval "$(cluster/local/start.sh --workers 2)"      # prints RAY_ADDRESS=... RAYTTS_LOCAL_DIR=... lines to eval
#   ray job submit --working-dir . -- raytts run jobs/examples/job.yaml --output /tmp/out \
#       --set actors.size=2 --set actors.num_gpus=1 --set engine.device=cpu
#   cluster/local/stop.sh "$RAYTTS_LOCAL_DIR"
#
# Options: --workers N (2), --cpus-per-worker C (2), --gpus-per-worker G (1, fake), --head-cpus C (0: like the
# cloud configs, no tasks on the head), --object-store-mb M (256 per node), --dir DIR (default: a new /tmp folder;
# Ray's socket paths must stay short). Token auth is off (RAY_AUTH_MODE=disabled): everything listens on 127.0.0.2.
# Needs `ray` on PATH (the raytts venv's bin).
set -euo pipefail
workers=2
cpus=2
gpus=1
head_cpus=0
store_mb=256
dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) workers="${2:?}"; shift 2 ;;
        --cpus-per-worker) cpus="${2:?}"; shift 2 ;;
        --gpus-per-worker) gpus="${2:?}"; shift 2 ;;
        --head-cpus) head_cpus="${2:?}"; shift 2 ;;
        --object-store-mb) store_mb="${2:?}"; shift 2 ;;
        --dir) dir="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "start.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v ray > /dev/null || { echo "start.sh: no ray on PATH (activate the raytts venv: . .venv/bin/activate)" >&2; exit 2; }
python=$(dirname "$(command -v ray)")/python
[[ -x $python ]] || python=python3
dir=${dir:-$(mktemp -d /tmp/rtl.XXXXXX)}
mkdir -p "$dir"
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1: Ray's switch for multi-node clusters (=0 refuses workers that join a head);
# every node is still given 127.0.0.2 explicitly.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
unset RAY_ADDRESS

# Free ports, asked of the kernel all at once so none is handed out twice.
ports() {
    "$python" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.2", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}
read -r -a p <<< "$(ports $((4 + 5 * (workers + 1))))"
gcs=${p[0]} dashboard=${p[1]} client=${p[2]}
store=$((store_mb * 1024 * 1024))
node_ports() {  # the per-node ports of node $1 (0 = head)
    local i=$((4 + 5 * $1))
    echo "--node-manager-port=${p[i]} --object-manager-port=${p[i+1]} --dashboard-agent-listen-port=${p[i+2]}" \
         "--dashboard-agent-grpc-port=${p[i+3]} --metrics-export-port=${p[i+4]}"
}
log="$dir/start.log"
# shellcheck disable=SC2046
ray start --head --node-ip-address=127.0.0.2 --port="$gcs" --dashboard-host=127.0.0.2 --dashboard-port="$dashboard" \
    --ray-client-server-port="$client" --num-cpus="$head_cpus" --num-gpus=0 --object-store-memory="$store" \
    --temp-dir="$dir/n0" --disable-usage-stats $(node_ports 0) >> "$log" 2>&1 \
    || { echo "start.sh: the head did not start; see $log" >&2; tail -n 20 "$log" >&2; exit 1; }
for ((n = 1; n <= workers; n++)); do
    # shellcheck disable=SC2046
    ray start --address="127.0.0.2:$gcs" --node-ip-address=127.0.0.2 --num-cpus="$cpus" --num-gpus="$gpus" \
        --object-store-memory="$store" --temp-dir="$dir/n$n" --disable-usage-stats $(node_ports "$n") >> "$log" 2>&1 \
        || { echo "start.sh: worker $n did not start; see $log" >&2; tail -n 20 "$log" >&2; "$(dirname "$0")/stop.sh" "$dir"; exit 1; }
done
cat > "$dir/cluster.env" <<ENV
RAY_ADDRESS=http://127.0.0.2:$dashboard
RAYTTS_LOCAL_GCS=127.0.0.2:$gcs
RAYTTS_LOCAL_DIR=$dir
RAY_AUTH_MODE=disabled
ENV
# The nodes register with the GCS asynchronously: wait until all of them are alive.
"$python" - "$gcs" "$((workers + 1))" <<'PY' >> "$log" 2>&1 || { echo "start.sh: not every node joined; see $log" >&2; exit 1; }
import sys, time
import ray
ray.init(address=f"127.0.0.2:{sys.argv[1]}", log_to_driver=False)
deadline = time.monotonic() + 60
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.monotonic() > deadline:
        sys.exit(f"{sum(n['Alive'] for n in ray.nodes())} of {sys.argv[2]} nodes alive after 60 s")
    time.sleep(0.5)
print(f"{sys.argv[2]} nodes alive: {ray.cluster_resources()}")
PY
echo "started: head + $workers workers ($cpus CPUs, $gpus fake GPUs each), dashboard http://127.0.0.2:$dashboard, temp $dir" >&2
sed 's/^/export /' "$dir/cluster.env"
