#!/usr/bin/env bash
# Load test on this machine's loopback: a release arena-server and COUNT wander bots for
# DURATION seconds, in a full match by default (--max-players equal to COUNT, so the arena
# is sized for the players in it). Prints the bots' JSON report, the server's /status at
# the end of the run, and a summary line of JSON:
#   cpu_us_per_client_tick   server CPU (user + system) per client per tick
#   cpu_user_us_per_client_tick, cpu_system_us_per_client_tick   the two parts (the
#                            system part is mostly the kernel's cost of each send)
#   tick_us_p50, tick_us_p99 the tick's work (last 10 s, from /status)
#   snapshot_every_ticks     1 unless the server shed load
#   snapshots_per_bot_per_s  what the bots received
#   down_bytes_per_bot_per_s UDP payload bytes per bot per second
#   bytes_per_entity_update  snapshot_bytes_per_s / entity_updates_per_s (from /status)
#   bots_cpu_s               CPU (user + system) the bots process used (and the tee that
#                            copies its report), for the machine's share: on one machine the
#                            bots and the server share its cores
#
# Usage: scripts/load-test.sh [COUNT] [DURATION_S] [MAX_PLAYERS] [-- SERVER_ARGS...]
#   scripts/load-test.sh 256 30                 256 bots, full match
#   scripts/load-test.sh 256 30 1024            the same bots in 1,024 slots
#   scripts/load-test.sh 64 30 -- --client-bytes-per-s 8000
#   NO_BUILD=1 scripts/load-test.sh ...   use the binaries already in target/release
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200}
duration=${2:-30}
max_players=$count
shift $(($# < 2 ? $# : 2))
if [ $# -gt 0 ] && [ "$1" != -- ]; then max_players=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = -- ]; then shift; fi
if [ "$max_players" -lt "$count" ]; then
    echo "load-test: MAX_PLAYERS ($max_players) is below COUNT ($count)" >&2
    exit 2
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace --quiet
source scripts/lib.sh
read -r udp admin server < <(start_server server --max-players "$max_players" "$@")
ticks() { awk '{print $14, $15}' "/proc/$server/stat"; }
cpu_before=$(ticks)
tick_before=$(curl -s "http://$admin/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tick"])')
# The shell's `times` (its second line: what its waited-for children used) before and
# after the bots; written to files, as a command substitution would be a fresh subshell.
times > "$dir/times.before"
./target/release/arena-bots --admin "http://$admin" --count "$count" \
    --duration "$duration" --behavior wander | tee "$dir/bots.json"
times > "$dir/times.after"
status=$(curl -s "http://$admin/status")
cpu_after=$(ticks)
echo "$status"
python3 - "$cpu_before" "$cpu_after" "$tick_before" "$count" "$(getconf CLK_TCK)" \
    "$dir/bots.json" "$dir/times.before" "$dir/times.after" <<PY
import json, re, sys
def children_cpu_s(path):
    # "0m1.250s 0m0.310s" on the second line: the children's user and system time.
    line = open(path).read().splitlines()[1]
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))
user_before, system_before = map(float, sys.argv[1].split())
user_after, system_after = map(float, sys.argv[2].split())
tick_before, count, hz = map(float, sys.argv[3:6])
bots = json.load(open(sys.argv[6]))
status = json.loads('''$status''')
ticks = status["tick"] - tick_before
user_s = (user_after - user_before) / hz
system_s = (system_after - system_before) / hz
cpu_s = user_s + system_s
per_client_tick = lambda s: s * 1e6 / (ticks * count) if ticks else None
updates = status.get("entity_updates_per_s") or 0
snapshot_bytes = status.get("snapshot_bytes_per_s")
print(json.dumps({
    "bots": int(count),
    "max_players": status["max_players"],
    "server_cpu_s": cpu_s,
    "bots_cpu_s": children_cpu_s(sys.argv[8]) - children_cpu_s(sys.argv[7]),
    "ticks": ticks,
    "cpu_us_per_client_tick": per_client_tick(cpu_s),
    "cpu_user_us_per_client_tick": per_client_tick(user_s),
    "cpu_system_us_per_client_tick": per_client_tick(system_s),
    "tick_us_p50": status["tick_us_p50"],
    "tick_us_p99": status["tick_us_p99"],
    "snapshot_every_ticks": status["snapshot_every_ticks"],
    "snapshots_per_bot_per_s": bots["snapshots_per_bot_per_s"],
    "down_bytes_per_bot_per_s": bots["down_bytes_per_bot_per_s"],
    "bytes_per_entity_update": snapshot_bytes / updates if updates and snapshot_bytes else None,
    "entity_updates_per_s": updates,
    "entity_wait_ticks_max": status.get("entity_wait_ticks_max"),
    "inputs_late": status.get("inputs_late"),
    "inputs_applied": status.get("inputs_applied"),
}))
PY
