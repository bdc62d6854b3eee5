#!/bin/sh
# redis-storage.sh - portcullis with `[storage] kind = "redis"` for run.sh, beside the file-storage
# entry compare.sh always runs (same binary, same certificate and document root):
#   bench/redis-storage.sh BIN REDIS_URL HOST PORT CHAIN KEY DOCROOT WORKERS RUNDIR
# compare.sh adds it as `portcullis-redis` when REDIS_URL is set. Static files only (no /proxy
# route): for the handshake, resumption and request workloads (hs13, hs12, res13, h1, h2, bulk,
# idle). Session tickets then come from the cluster's shared keys in Redis. REDIS_URL "file" writes
# the same configuration without [storage] (the data directory), for an A/B of the storage alone:
#   run.sh ... "file=bench/redis-storage.sh BIN file {HOST} ..." "redis=bench/redis-storage.sh BIN redis://..."
set -eu
BIN=$1 URL=$2 HOST=$3 PORT=$4 CHAIN=$5 KEY=$6 ROOT=$7 W=$8 RUN=$9
head -c 32 /dev/urandom > "$RUN/storage.kek"
STORAGE="[storage]
kind = \"redis\"
url = \"$URL\"
prefix = \"bench-$$:\"
key_encryption_key_file = \"$RUN/storage.kek\""
[ "$URL" = file ] && STORAGE=""
cat > "$RUN/p.toml" <<EOT
workers = $W
data_dir = "$RUN/data"
[listen]
https = ["$HOST:$PORT"]
http = []
$STORAGE
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
