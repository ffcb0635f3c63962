#!/usr/bin/env bash
# Handoff benchmark on loopback: a release owner, N bots, and H handoffs, each to a fresh
# standby, first with make before break (the default: clients connect to the standby
# while they play, and switch at its first snapshot), then without it (`"prepare": false`:
# clients get the redirect at the commit and do the whole netcode handshake after the
# freeze). Prints each handoff's pause (as the resuming process measured it), then per
# mode the median pause and the bots' report (max_snapshot_gap_ms: the worst gap any bot
# saw, i.e. the worst handoff's player-visible gap).
# Usage: scripts/handoff-bench.sh [BOTS] [HANDOFFS] [SIMULATE]   e.g. 200 10 latency=40ms
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${1:-200}
handoffs=${2:-10}
simulate=${3:-}
cargo build --release --workspace --quiet
source scripts/lib.sh
sim_args=()
if [ -n "$simulate" ]; then sim_args=(--simulate "$simulate"); fi

run_mode() {
    local mode=$1 prepare=$2
    read -r udp admin _ < <(start_server "$mode-s0" --match-id "$mode")
    local duration=$((handoffs * 3 + 6))
    ./target/release/arena-bots --admin "http://$admin" --count "$bots" \
        --duration "$duration" "${sim_args[@]}" > "$dir/$mode-bots.json" &
    local bots_pid=$!
    sleep 3
    : > "$dir/$mode-pauses"
    for i in $(seq "$handoffs"); do
        read -r _ next_admin _ < <(start_server "$mode-s$i" --standby)
        answer=$(curl -s -XPOST "http://$admin/handoff" -d "{\"to\": \"$next_admin\", \"prepare\": $prepare}")
        sleep 2.5
        pause=$(curl -s "http://$next_admin/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["handoff_pause_ms"])')
        echo "$mode handoff $i: $answer pause_ms=$pause"
        echo "$pause" >> "$dir/$mode-pauses"
        admin=$next_admin
    done
    wait "$bots_pid"
    python3 - "$mode" "$dir/$mode-pauses" "$dir/$mode-bots.json" <<'PY'
import json, statistics, sys
mode, pauses, bots = sys.argv[1], sys.argv[2], sys.argv[3]
p = [float(x) for x in open(pauses) if x.strip() not in ("", "None")]
r = json.load(open(bots))
print(f"{mode}: pause median {statistics.median(p):.1f} ms (min {min(p):.1f}, max {max(p):.1f}); "
      f"worst gap {r['max_snapshot_gap_ms']:.1f} ms; handoffs_prepared {r['handoffs_prepared']} "
      f"of {r['bots_handed_off']} bots; inputs sent {r['inputs_sent']} lost {r['inputs_lost']} "
      f"(unacknowledged at the end {r['inputs_unacknowledged']}, unaccounted {r['inputs_unaccounted']})")
PY
    echo "$mode bots: $(cat "$dir/$mode-bots.json")"
}

run_mode make-before-break true
run_mode break-before-make false
