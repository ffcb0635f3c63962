#!/usr/bin/env bash
# Load test on this machine's loopback: a release arena-server and N bots for D seconds.
# Prints the bots' JSON report, the server's /status at the end of the run, and the
# server's CPU time per client-tick. Usage: scripts/load-test.sh [COUNT] [DURATION_S]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200}
duration=${2:-30}
cargo build --release --workspace --quiet
source scripts/lib.sh
read -r udp admin server < <(start_server server --max-players $((count > 1024 ? count : 1024)))
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
cpu_before=$(ticks)
tick_before=$(curl -s "http://$admin/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tick"])')
./target/release/arena-bots --server "$udp" --admin "http://$admin" --count "$count" \
    --duration "$duration" --behavior wander | tee "$dir/bots.json"
status=$(curl -s "http://$admin/status")
cpu_after=$(ticks)
echo "$status"
python3 - "$cpu_before" "$cpu_after" "$tick_before" "$count" "$(getconf CLK_TCK)" <<PY
import json, sys
before, after, tick_before, count, hz = map(float, sys.argv[1:])
status = json.loads('''$status''')
ticks = status["tick"] - tick_before
cpu_s = (after - before) / hz
print(json.dumps({"server_cpu_s": cpu_s, "ticks": ticks,
                  "cpu_us_per_client_tick": cpu_s * 1e6 / (ticks * count) if ticks else None}))
PY
