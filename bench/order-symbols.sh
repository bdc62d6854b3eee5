#!/usr/bin/env bash
# order-symbols.sh - regenerate link/symbol-order.txt: the functions a release portcullis runs
# while it starts and serves, so the linker can place them next to each other.
#
# usage: bench/order-symbols.sh [BINARY]      (default: target/release/portcullis, built first)
#   A BINARY must come from `cargo build --release`: `cargo nextest run --release` leaves a
#   target/release/portcullis built with the dev-dependencies' features, whose symbol hashes
#   differ (an order made from it matches nothing in the real build).
#
# Why: the kernel maps a program's text in 64 KiB "fault-around" windows, so a function run at
# start-up or on the request path keeps the 64 KiB around it resident. Scattered over the 6.8 MiB
# of text, the few hundred KiB of code a server really runs kept 5 MiB resident (issue 5's "RSS
# after start"). Listed in link/symbol-order.txt, they are laid out together by lld
# (`--symbol-ordering-file`, passed by build.rs for release binaries).
#
# How: the binary runs under valgrind's cachegrind, which counts the instructions of every function executed, in
# two set-ups: quick mode with certificate files (as the benchmark runs it) and a config file
# with the plain-HTTP redirect and a local-CA site. Each gets HTTP/1.1 and HTTP/2 requests, TLS
# 1.2 and 1.3 handshakes, a resumed session, a static file, a 404 and a redirect (curl and
# openssl). The names are the linker's (mangled); a stale list only costs locality: names that
# no longer exist are skipped (`--no-warn-symbol-ordering`), new functions land in the default
# place. With perf and wrk (and h2load) present, a native run under load adds the sampled
# functions valgrind cannot see (aws-lc's AVX-512 paths). Regenerate after large changes: the RSS figure in BENCHMARKS.md says how much it buys.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-}
if [[ -z $BIN ]]; then
  cargo build --release --quiet
  BIN=target/release/portcullis
fi
for t in valgrind curl openssl; do
  command -v $t >/dev/null || { echo "order-symbols.sh: needs $t" >&2; exit 1; }
done
W=$(mktemp -d /tmp/portcullis-order.XXXXXX)
[[ -n ${KEEP:-} ]] || trap 'rm -rf "$W"' EXIT
PORT=$((21000 + RANDOM % 5000)) HPORT=$((26000 + RANDOM % 5000))

# a private CA and an ECDSA P-256 leaf for 127.0.0.1/localhost, as the benchmark uses
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=order-ca \
  -keyout "$W/ca.key" -out "$W/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$W/leaf.key" -out "$W/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$W/ext"
openssl x509 -req -in "$W/leaf.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
  -extfile "$W/ext" -out "$W/leaf.crt" 2>/dev/null
cat "$W/leaf.crt" "$W/ca.crt" >"$W/chain.pem"
mkdir -p "$W/docroot"
echo hello >"$W/docroot/hello"
head -c 1048576 /dev/urandom >"$W/docroot/1m"

# exercise URL CAFILE: the requests every set-up gets
exercise() {
  local url=$1 ca=$2
  local v p
  for v in --http1.1 --http2; do
    for p in hello 1m nope ""; do
      curl -sS -o /dev/null --cacert "$ca" $v "$url/$p" || true
    done
  done
  curl -sS -o /dev/null --cacert "$ca" --tls-max 1.2 "$url/hello" || true
  curl -sS -o /dev/null --cacert "$ca" --tlsv1.3 -H 'Accept-Encoding: gzip' "$url/hello" || true
  local hp=${url##*:}
  openssl s_client -connect "127.0.0.1:$hp" -servername localhost -CAfile "$ca" -sess_out "$W/sess" \
    </dev/null >/dev/null 2>&1 || true
  openssl s_client -connect "127.0.0.1:$hp" -servername localhost -CAfile "$ca" -sess_in "$W/sess" \
    </dev/null >/dev/null 2>&1 || true
}

# wait_up: until the server on $PORT answers (at most 60 s: valgrind starts slowly)
wait_up() {
  for ((i = 0; i < 600; i++)); do
    curl -s -o /dev/null -k "https://127.0.0.1:$PORT/hello" && return
    sleep 0.1
  done
}

# quick mode as the benchmark runs it: certificate files, the docroot, no plain HTTP
quick_args() {
  echo serve --listen "127.0.0.1:$PORT" --no-http --cert "$W/chain.pem" --key "$W/leaf.key" \
    --root "$W/docroot" --workers 2 --data-dir "$W/$1" --log-level warn
}

# run NAME ARGS...: the server under cachegrind until it answers, exercised, then stopped
run() {
  local name=$1
  shift
  valgrind --tool=cachegrind --cache-sim=no --demangle=no \
    --cachegrind-out-file="$W/$name.out" "$BIN" "$@" >"$W/$name.log" 2>&1 &
  local pid=$!
  wait_up
  exercise "https://localhost:$PORT" "${CA:-$W/ca.crt}"
  [[ -n ${HTTP_URL:-} ]] && curl -sS -o /dev/null "$HTTP_URL/hello"
  kill -TERM $pid
  wait $pid || true
  [[ -s $W/$name.out ]] || { echo "order-symbols.sh: cachegrind wrote nothing for $name; log:" >&2; cat "$W/$name.log" >&2; exit 1; }
}

run quick $(quick_args data1)

cat >"$W/config.toml" <<EOF
data_dir = "$W/data2"
[listen]
https = ["127.0.0.1:$PORT"]
http = ["127.0.0.1:$HPORT"]
[[site]]
name = "local"
hosts = ["localhost", "127.0.0.1"]
root = "$W/docroot"
EOF
CA="$W/data2/local-ca/root.pem" HTTP_URL="http://127.0.0.1:$HPORT" run config serve --config "$W/config.toml"

# Natively, with perf when there is one: sampled functions that valgrind cannot show, e.g. the
# AVX-512 code aws-lc picks at run time (valgrind's CPU has no AVX-512), under some load.
: >"$W/native.txt"
if command -v perf >/dev/null && command -v wrk >/dev/null; then
  "$BIN" $(quick_args data3) >"$W/native.log" 2>&1 &
  spid=$!
  wait_up
  perf record -q -F 20000 -e cpu-clock -p $spid -o "$W/perf.data" >/dev/null 2>&1 &
  ppid=$!
  sleep 0.5
  exercise "https://localhost:$PORT" "$W/ca.crt"
  wrk -t1 -c8 -d2s "https://127.0.0.1:$PORT/hello" >/dev/null 2>&1 || true
  wrk -t1 -c4 -d1s "https://127.0.0.1:$PORT/1m" >/dev/null 2>&1 || true
  command -v h2load >/dev/null && h2load -n 20000 -c8 -m10 "https://127.0.0.1:$PORT/hello" >/dev/null 2>&1 || true
  openssl s_time -connect "127.0.0.1:$PORT" -new -time 2 >/dev/null 2>&1 || true
  kill -INT $ppid
  wait $ppid || true
  kill -TERM $spid
  wait $spid || true
  perf report -i "$W/perf.data" --no-demangle --sort sym --stdio -q 2>/dev/null |
    awk '$2 == "[.]" { print $3 }' >"$W/native.txt" || true
fi

mkdir -p link
{
  echo "# lld --symbol-ordering-file: functions run at start-up and while serving (bench/order-symbols.sh)"
  # only the binary's own functions (not libc's), in order of first appearance
  nm "$BIN" | awk '{ print $NF }' >"$W/syms"
  { grep -h '^fn=' "$W/quick.out" "$W/config.out" | sed 's/^fn=//'; cat "$W/native.txt"; } |
    awk -v syms="$W/syms" 'BEGIN { while ((getline s <syms) > 0) own[s] = 1 } own[$0] && !seen[$0]++'
} >link/symbol-order.txt.new
mv link/symbol-order.txt.new link/symbol-order.txt
echo "link/symbol-order.txt: $(grep -vc '^#' link/symbol-order.txt) functions"
