#!/usr/bin/env bash
# Handoff benchmark on loopback: a release owner, N bots, and H handoffs, each to a fresh
# standby. Prints each handoff's pause (as the resuming process measured it) and the bots'
# report. Usage: scripts/handoff-bench.sh [BOTS] [HANDOFFS]
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${1:-200}
handoffs=${2:-10}
cargo build --release --workspace --quiet
source scripts/lib.sh
read -r udp admin _ < <(start_server s0)
duration=$((handoffs * 3 + 6))
./target/release/arena-bots --server "$udp" --admin "http://$admin" --count "$bots" --duration "$duration" > "$dir/bots.json" &
bots_pid=$!
sleep 3
for i in $(seq "$handoffs"); do
    read -r next_udp next_admin _ < <(start_server "s$i" --standby)
    answer=$(curl -s -XPOST "http://$admin/handoff" -d "{\"to\": \"$next_admin\"}")
    sleep 2.5
    pause=$(curl -s "http://$next_admin/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["handoff_pause_ms"])')
    echo "handoff $i: $answer pause_ms=$pause"
    admin=$next_admin
done
wait "$bots_pid"
cat "$dir/bots.json"
