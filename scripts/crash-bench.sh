#!/usr/bin/env bash
# Crash recovery on loopback: a release owner, a standby watching its lease, N bots; the
# owner gets SIGKILL (or SIGSTOP, then SIGCONT 3 s later) mid-match. Prints when the
# standby took over, its rollback, and the bots' honest count: inputs sent, applied (as
# the servers counted them), rolled back (applied by the dead owner after its last
# snapshot), lost (sent and not applied, for any reason) and unaccounted (expected 0);
# max_snapshot_gap_ms is the worst time a bot went without a snapshot, so it bounds every
# bot's recovery. STORE=redis: owner and standby share only a Redis and the key (see
# scripts/lib.sh). Usage: [STORE=redis] [KILL_AT=seconds] scripts/crash-bench.sh [BOTS] [KILL|STOP]
set -euo pipefail
cd "$(dirname "$0")/.."
bots=${1:-200}
sig=${2:-KILL}
cargo build --release --workspace --quiet
source scripts/lib.sh
read -r b_udp b_admin _ < <(start_server standby --standby --watch default)
read -r a_udp a_admin a_pid < <(start_server owner --peer "$b_udp")
./target/release/arena-bots --admin "http://$a_admin" --count "$bots" --duration 15 > "$dir/bots.json" &
bots_pid=$!
sleep "${KILL_AT:-5}"
echo "SIG$sig to the owner (pid $a_pid) at $(date +%T.%3N)"
kill -"$sig" "$a_pid"
if [ "$sig" = STOP ]; then sleep 3; kill -CONT "$a_pid"; echo "SIGCONT at $(date +%T.%3N)"; fi
wait "$bots_pid"
grep -h "lease lapsed\|took the match\|lost ownership" "$dir"/*.log | cut -c1-220
curl -s "http://$b_admin/status" | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ["role","epoch","restores","rollback_ticks","rollback_ticks_at_least","rollback_ticks_reason","players","inputs_applied","inputs_skipped"]})'
python3 - "$dir/bots.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["inputs_sent", "inputs_applied", "inputs_rolled_back", "inputs_given_up",
        "inputs_unacknowledged", "inputs_lost", "inputs_unaccounted", "max_rollback_ticks",
        "max_snapshot_gap_ms", "connected", "reconnects"]
print("count:", {k: r[k] for k in keys})
PY
cat "$dir/bots.json"
