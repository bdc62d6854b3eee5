#!/bin/sh
# args: BIN HOST PORT CHAIN KEY DOCROOT WORKERS RUNDIR BACKEND MODE
BIN=$1 HOST=$2 PORT=$3 CHAIN=$4 KEY=$5 ROOT=$6 W=$7 RUN=$8 BACKEND=$9 MODE=${10}
cat > "$RUN/p.toml" <<EOT
workers = $W
data_dir = "$RUN/data"
[listen]
https = ["$HOST:$PORT"]
http = []
[http]
h3_endpoints = "$MODE"
${H3EXTRA:-}
[[site]]
name = "bench"
hosts = ["localhost", "127.0.0.1"]
cert = "$CHAIN"
key = "$KEY"
[[site.route]]
path = "/"
files = { root = "$ROOT" }
EOT
exec "$BIN" serve --config "$RUN/p.toml" --log-level warn
