# Shared by the benchmark scripts: a scratch dir, servers on OS-chosen loopback ports, and
# a trap that stops every server started (by pid) when the script ends.
# shellcheck shell=bash

dir=$(mktemp -d)
# Stops every process it started (by pid), waits (at most 2 s each) until they are gone,
# so that none writes into $dir while it is removed, then removes it.
stop_all() {
    local p pid
    for p in "$dir"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done
    for p in "$dir"/*.pid; do
        pid=$(cat "$p")
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    done
    rm -rf "$dir"
}
trap stop_all EXIT

# STORE=redis: the servers share only a Redis (started here, no persistence, a free
# loopback port, stopped by the trap) and a key file; each has a data dir of its own, as
# on separate machines. Otherwise they share the file store in $dir.
store_args=()
if [ "${STORE:-file}" = redis ]; then
    redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        > "$dir/redis.log" 2>&1 &
    echo $! > "$dir/redis.pid"
    for _ in $(seq 100); do [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$dir/fleet.key"
    store_args=(--store "redis://127.0.0.1:$redis_port" --key-file "$dir/fleet.key")
fi

# start_server NAME [ARGS...]: starts a release arena-server with its files in $dir (or,
# with STORE=redis, $dir/NAME), waits until it serves, and prints "UDP ADMIN PID".
start_server() {
    local name=$1; shift
    local data="$dir"
    if [ "${#store_args[@]}" -gt 0 ]; then data="$dir/$name"; fi
    ./target/release/arena-server --listen 127.0.0.1:0 --admin 127.0.0.1:0 --data-dir "$data" \
        ${store_args[@]+"${store_args[@]}"} "$@" 2> "$dir/$name.log" &
    echo $! > "$dir/$name.pid"
    for _ in $(seq 100); do grep -q serving "$dir/$name.log" && break; sleep 0.05; done
    echo "$(grep -o 'udp=[^ ]*' "$dir/$name.log" | head -1 | cut -d= -f2)" \
        "$(grep -o 'admin=[^ ]*' "$dir/$name.log" | head -1 | cut -d= -f2)" \
        "$(cat "$dir/$name.pid")"
}
