# Shared by the benchmark scripts: a scratch dir, servers on OS-chosen loopback ports, and
# a trap that stops every server started (by pid) when the script ends.
# shellcheck shell=bash

dir=$(mktemp -d)
trap 'for p in "$dir"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done; rm -rf "$dir"' EXIT

# start_server NAME [ARGS...]: starts a release arena-server with its files in $dir,
# waits until it serves, and prints "UDP ADMIN PID".
start_server() {
    local name=$1; shift
    ./target/release/arena-server --listen 127.0.0.1:0 --admin 127.0.0.1:0 --data-dir "$dir" "$@" \
        2> "$dir/$name.log" &
    echo $! > "$dir/$name.pid"
    for _ in $(seq 100); do grep -q serving "$dir/$name.log" && break; sleep 0.05; done
    echo "$(grep -o 'udp=[^ ]*' "$dir/$name.log" | head -1 | cut -d= -f2)" \
        "$(grep -o 'admin=[^ ]*' "$dir/$name.log" | head -1 | cut -d= -f2)" \
        "$(cat "$dir/$name.pid")"
}
