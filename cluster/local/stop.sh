#!/usr/bin/env bash
# Stops the local cluster that cluster/local/start.sh started in DIR: only the Ray processes of that cluster (found by
# its nodes' temp folders DIR/nN in their command lines), not other Ray processes of this machine (`ray stop` would
# stop them all).
# SIGTERM, then SIGKILL after 10 s; then removes DIR.
#
#   cluster/local/stop.sh "$RAYTTS_LOCAL_DIR"
set -euo pipefail
dir="${1:?usage: cluster/local/stop.sh DIR (the folder start.sh printed as RAYTTS_LOCAL_DIR)}"
dir=$(cd "$dir" 2>/dev/null && pwd) || { echo "stop.sh: no folder $1" >&2; exit 2; }
if [[ $dir != /tmp/* ]] || [[ ! -e $dir/cluster.env && ! -e $dir/start.log ]]; then
    echo "stop.sh: $dir is not a folder cluster/local/start.sh made (no cluster.env or start.log)" >&2
    exit 2
fi
pattern="$dir/n[0-9]"   # this script's own command line names $dir, never $dir/nN
pkill -TERM -f -- "$pattern" 2>/dev/null || true
for _ in $(seq 20); do
    pgrep -f -- "$pattern" > /dev/null || break
    sleep 0.5
done
pkill -KILL -f -- "$pattern" 2>/dev/null || true
rm -rf "$dir"
echo "stopped the local cluster in $dir" >&2
