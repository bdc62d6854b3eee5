#!/usr/bin/env bash
# profile.sh - perf profile of portcullis under one benchmark workload (loopback, pinned).
#
# usage: bench/profile.sh [-s SECS] [-g dwarf|fp|none] [-u] WORKLOAD [OUTDIR]
#   WORKLOAD  h1 (wrk -t2 -c64 /hello), h2 (h2load -t2 -c64 -m10 /hello), bulk (wrk -c16 /1m),
#             hs13, hs12, res13 (tlsload: full TLS 1.3 / full TLS 1.2 / resumed TLS 1.3
#             handshakes + GET, 32 loops)
#   OUTDIR    default /tmp/portcullis-bench/profile-WORKLOAD
# Server: $PORTCULLIS_BIN (default /tmp/portcullis-bench/bin/portcullis, the binary of the last
# bench/compare.sh run) on CPU 0, with the PKI, docroot and tlsload of a previous compare.sh run
# in $BENCH_WORK (default /tmp/portcullis-bench); load generator on CPU 1, as run.sh's pinned mode.
# perf: software event cpu-clock (this VM has no hardware counters), call graphs with DWARF
# unwinding by default (-g fp: frame pointers, which Rust release builds do not keep; -g none: flat).
# -u: unpinned, as run.sh's unpinned mode (server and load generator share every CPU).
# Writes OUTDIR/perf.data, OUTDIR/report-self.txt (flat, by symbol), OUTDIR/report-dso.txt,
# OUTDIR/report-children.txt (inclusive), OUTDIR/load.txt (the load generator's output).
set -euo pipefail
SECS=10 CG=dwarf PIN_SERVER=(taskset -c 0) PIN_LOAD=(taskset -c 1)
while getopts "s:g:uh" opt; do
  case $opt in
  s) SECS=$OPTARG ;; g) CG=$OPTARG ;; u) PIN_SERVER=() PIN_LOAD=() ;; *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
WL=${1:?workload: h1 h2 bulk hs13 hs12 res13}
BENCH_WORK=${BENCH_WORK:-/tmp/portcullis-bench}
OUT=${2:-$BENCH_WORK/profile-$WL}
BIN=${PORTCULLIS_BIN:-$BENCH_WORK/bin/portcullis}
PKI=$BENCH_WORK/pki DOCROOT=$BENCH_WORK/docroot TLSLOAD=$BENCH_WORK/target/release/tlsload
for f in "$BIN" "$PKI/leaf-ecdsa.fullchain.pem" "$DOCROOT/1m" "$TLSLOAD"; do
  [[ -e $f ]] || { echo "profile.sh: missing $f (run bench/compare.sh -q first)" >&2; exit 1; }
done
# one benchmark at a time: this pins a server to CPU 0 and a load generator to CPU 1, exactly what a
# running run.sh measures (ALLOW_CONCURRENT=1 to skip the wait)
if [[ -z ${ALLOW_CONCURRENT:-} ]]; then
  for ((w = 0; ; w++)); do
    others=$(pgrep -f '/bench/(run|limits)\.sh' || true)
    [[ -n $others ]] || break
    ((w < 120)) || { echo "profile.sh: another benchmark is still running after 20 min: $others" >&2; exit 1; }
    ((w % 6)) || echo "profile.sh: waiting for another benchmark to finish (pids $(echo $others))" >&2
    sleep 10
  done
fi
mkdir -p "$OUT"
PORT=${PORT:-29443}
DATA=$(mktemp -d)
"${PIN_SERVER[@]}" "$BIN" serve --listen "127.0.0.1:$PORT" --no-http --cert "$PKI/leaf-ecdsa.fullchain.pem" \
  --key "$PKI/leaf-ecdsa.key" --root "$DOCROOT" --workers 2 --data-dir "$DATA" --log-level warn \
  >"$OUT/server.log" 2>&1 &
SPID=$!
trap 'kill -TERM $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 50); do
  curl -sk --max-time 2 "https://127.0.0.1:$PORT/hello" >/dev/null && break
  sleep 0.2
done
export OPENSSL_CONF=$BENCH_WORK/client-openssl.cnf
LOADSECS=$((SECS + 3))
case $WL in
h1) load=(wrk -t2 -c64 -d"${LOADSECS}s" "https://127.0.0.1:$PORT/hello") ;;
bulk) load=(wrk -t2 -c16 -d"${LOADSECS}s" "https://127.0.0.1:$PORT/1m") ;;
h2) load=(h2load -t2 -c64 -m10 -D "$LOADSECS" "https://127.0.0.1:$PORT/hello") ;;
hs13 | hs12 | res13)
  case $WL in hs13) tls=(--tls 1.3) ;; hs12) tls=(--tls 1.2) ;; res13) tls=(--tls 1.3 --resume) ;; esac
  load=("$TLSLOAD" --host 127.0.0.1 --port "$PORT" --sni localhost --conc 32 --duration "$LOADSECS" --warmup 1 "${tls[@]}" --path /hello) ;;
*) echo "profile.sh: unknown workload $WL" >&2; exit 2 ;;
esac
"${PIN_LOAD[@]}" "${load[@]}" >"$OUT/load.txt" 2>&1 &
LPID=$!
sleep 1.5
case $CG in dwarf) cg=(--call-graph dwarf,16384) ;; none) cg=() ;; *) cg=(-g) ;; esac
perf record -e cpu-clock -F 2000 "${cg[@]}" -p "$SPID" -o "$OUT/perf.data" -- sleep "$SECS" 2>"$OUT/perf-record.txt" || true
wait "$LPID" || true
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio -g none --percent-limit 0.3 2>/dev/null >"$OUT/report-self.txt"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null >"$OUT/report-dso.txt"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none --percent-limit 2 2>/dev/null >"$OUT/report-children.txt"
echo "profile.sh: $OUT (report-self.txt, report-children.txt, report-dso.txt, load.txt)" >&2
