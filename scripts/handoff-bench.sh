#!/usr/bin/env bash
# Handoff benchmark on loopback: a release owner, N bots, and H handoffs, each to a fresh
# standby. Prints each handoff's pause (as the resuming process measured it) and the bots'
# report. Usage: scripts/handoff-bench.sh [BOTS] [HANDOFFS]
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${1:-200}
handoffs=${2:-10}
cargo build --release --workspace --quiet
dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
start() { # name, extra args...; prints "udp admin"
    local name=$1; shift
    ./target/release/arena-server --listen 127.0.0.1:0 --admin 127.0.0.1:0 --data-dir "$dir" "$@" 2> "$dir/$name.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q serving "$dir/$name.log" && break; sleep 0.05; done
    echo "$(grep -o 'udp=[^ ]*' "$dir/$name.log" | head -1 | cut -d= -f2) $(grep -o 'admin=[^ ]*' "$dir/$name.log" | head -1 | cut -d= -f2)"
}
read -r udp admin < <(start s0)
duration=$((handoffs * 3 + 6))
./target/release/arena-bots --server "$udp" --admin "http://$admin" --count "$bots" --duration "$duration" > "$dir/bots.json" &
bots_pid=$!
sleep 3
for i in $(seq "$handoffs"); do
    read -r next_udp next_admin < <(start "s$i" --standby)
    answer=$(curl -s -XPOST "http://$admin/handoff" -d "{\"to\": \"$next_admin\"}")
    sleep 2.5
    pause=$(curl -s "http://$next_admin/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["handoff_pause_ms"])')
    echo "handoff $i: $answer pause_ms=$pause"
    admin=$next_admin
done
wait "$bots_pid"
cat "$dir/bots.json"
