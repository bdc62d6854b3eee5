#!/usr/bin/env bash
# compare.sh - portcullis side by side with nginx, haproxy, caddy and h2o.
#
# usage: bench/compare.sh [run.sh options]       (from any directory)
#
#   bench/compare.sh                 full run: all workloads incl. hs13c1, pinned + unpinned (~10 min)
#   bench/compare.sh -q              smoke test (short workloads, pinned only, ~2 min)
#   bench/compare.sh -r 2 -o /tmp/x  any run.sh option is passed through; later ones win
#   bench/compare.sh -l hs13,h1      only some workloads
#   bench/compare.sh -l px1,px2,pxbulk,pxlat   the reverse-proxy workloads
#   bench/compare.sh -l h3,h3bulk,h3hs         HTTP/3 (portcullis serves it on UDP at the same
#                    port by default; run.sh builds its quinn load generator; of the Debian
#                    anchors only caddy speaks HTTP/3, the others' h3 rows stay empty)
#   bench/h3idle.py HOST PORT PID [N]           memory per idle HTTP/3 connection (aioquic)
#   REDIS_URL=redis://127.0.0.1:6390/0 bench/compare.sh -l hs13,res13,h2
#                    adds `portcullis-redis` (bench/redis-storage.sh: the same binary with
#                    [storage] kind = "redis" at that URL; static files only) beside portcullis
#
# What it does:
#   1. cargo build --release in the repo root (target dir: $CARGO_TARGET_DIR, default
#      <repo>/target), then copies the binary into the work dir, so that a rebuild by
#      someone else during the run cannot swap the binary under the benchmark;
#   2. runs $BENCH/run.sh (default /work/shared/bench/run.sh) with the anchors
#      ($ANCHORS, default "nginx haproxy caddy h2o") and
#        portcullis=<bin> serve --listen {HOST}:{PORT} --no-http --cert {CHAIN} --key {KEY}
#                   --root {DOCROOT} --workers {WORKERS} --data-dir {RUNDIR}/data --log-level warn
#                   --proxy /proxy=http://{BACKEND}
#      ({RUNDIR} is the fresh, private per-start directory run.sh makes: a temp data dir);
#   3. prints the preflight of every server and where the results are.
#
# Defaults given to run.sh before your options (so yours override them):
#   -w $BENCH_WORK   (default /tmp/portcullis-bench; keeps PKI, docroot and the tlsload build)
#   -o $BENCH_WORK/results-YYYYmmdd-HHMMSS
#   -l hs13,hs12,res13,hs13c1,h1,h2,bulk,idle,idle2   (run.sh's default set + hs13c1)
# Environment: BENCH, BENCH_WORK, ANCHORS, REDIS_URL, CARGO_TARGET_DIR, NO_BUILD=1 (use the existing binary),
#   PORTCULLIS_BIN=/path (benchmark exactly this binary: no build, no copy; to repeat a run),
#   ALLOW_CONCURRENT=1 (do not wait while another run.sh/limits.sh is running; by default it waits).
# Needs: nginx haproxy caddy h2o nghttp2-client wrk openssl curl time python3 (see BENCHMARKS.md).
# Pool runs: python3 $BENCH/lib/report.py --out combined.md OUT1 OUT2
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=${BENCH:-/work/shared/bench}
BENCH_WORK=${BENCH_WORK:-/tmp/portcullis-bench}
ANCHORS=${ANCHORS:-nginx haproxy caddy h2o}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

case "${1:-}" in -h | --help) sed -n '2,35p' "${BASH_SOURCE[0]}"; exit 0 ;; esac
[[ -x $BENCH/run.sh ]] || { echo "compare.sh: no $BENCH/run.sh (set BENCH)" >&2; exit 1; }

git_rev() {
  local r
  r=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null) ]] || r+="+dirty"
  echo "$r"
}
if [[ -n ${PORTCULLIS_BIN:-} ]]; then
  # ---- a given binary (e.g. to repeat a run with the very same build): no build, no copy
  BIN=$PORTCULLIS_BIN
  [[ -x $BIN ]] || { echo "compare.sh: PORTCULLIS_BIN=$BIN is not executable" >&2; exit 1; }
  rev="given binary; tree now at $(git_rev)"
  SRC_BIN=$BIN
else
  # ---- build (the tree as it is now: others may be editing src/, so the revision is noted
  # before and after the build)
  rev=$(git_rev)
  if [[ -z ${NO_BUILD:-} ]]; then
    echo "compare.sh: cargo build --release (target dir $TARGET_DIR)" >&2
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --bin portcullis)
  fi
  rev2=$(git_rev)
  [[ $rev2 == "$rev" ]] || rev="$rev, tree changed to $rev2 during the build"
  SRC_BIN="$TARGET_DIR/release/portcullis"
  [[ -x $SRC_BIN ]] || { echo "compare.sh: no $SRC_BIN" >&2; exit 1; }
  # ---- snapshot the binary, so that a rebuild by someone else cannot swap it mid-run
  mkdir -p "$BENCH_WORK/bin"
  BIN="$BENCH_WORK/bin/portcullis"
  cp -f "$SRC_BIN" "$BIN.tmp" && mv -f "$BIN.tmp" "$BIN"
fi
# ---- a stale link/symbol-order.txt costs ~1 MiB of "RSS after start" and says nothing: any
# change to the dependency graph (a crate feature, a new dependency) changes every portcullis
# symbol's hash. Warn when fewer than half of the listed portcullis functions are in the binary.
if command -v nm >/dev/null && [[ -f $ROOT/link/symbol-order.txt ]]; then
  read -r listed found < <(nm "$BIN" 2>/dev/null | awk -v order="$ROOT/link/symbol-order.txt" '
    { have[$NF] = 1 }
    END { while ((getline s <order) > 0) if (s ~ /portcullis/) { n++; if (s in have) f++ }
          print n + 0, f + 0 }')
  if ((listed > 0 && 2 * found < listed)); then
    echo "compare.sh: WARNING: only $found of the $listed portcullis functions in link/symbol-order.txt" \
      "are in $BIN: the order is stale (run bench/order-symbols.sh on a release build, then rebuild)" >&2
  fi
fi
export SERVER_VERSION="$("$BIN" --version 2>/dev/null | head -1) (git $rev, binary $(date -r "$SRC_BIN" +%Y-%m-%dT%H:%M:%S), sha256 $(sha256sum "$BIN" | cut -c1-12))"
echo "compare.sh: portcullis = $SERVER_VERSION" >&2

# ---- drop the binary's pages from the page cache, so that it is read from disk when it starts,
# as an installed server (and the anchors' binaries) is. A just-written file sits in the page
# cache in the large folios of its writes, and the kernel maps whole folios on a fault: a freshly
# built or copied binary showed 0.6-1.3 MiB more "RSS after start" than the same bytes read back
# from disk (measured: 7.9-8.4 vs 7.3 MiB).
sync "$BIN" 2>/dev/null || sync
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$BIN" ||
  echo "compare.sh: could not drop $BIN from the page cache; its RSS after start may read high" >&2
CMD="$BIN serve --listen {HOST}:{PORT} --no-http --cert {CHAIN} --key {KEY} --root {DOCROOT}"
CMD+=" --workers {WORKERS} --data-dir {RUNDIR}/data --log-level warn"
# px* workloads: /proxy/... to run.sh's backend, prefix removed (servers/README.md's contract)
CMD+=" --proxy /proxy=http://{BACKEND}"

# ---- find the results dir that run.sh will use (the last -o wins, as in run.sh)
OUT_DIR="$BENCH_WORK/results-$(date +%Y%m%d-%H%M%S)"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[$i]} in
  -o) OUT_DIR=${args[$((i + 1))]:-$OUT_DIR} ;;
  -o?*) OUT_DIR=${args[$i]#-o} ;;
  esac
done

# ---- one benchmark at a time: a second run.sh on this 2-core machine would load both runs
# (and, with the same work dir, replace the other's server run dirs)
if [[ -z ${ALLOW_CONCURRENT:-} ]]; then
  for ((w = 0; ; w++)); do
    others=$(pgrep -f '/bench/(run|limits)\.sh' || true)
    [[ -n $others ]] || break
    ((w < 120)) || { echo "compare.sh: another benchmark is still running after 20 min: $others" >&2; exit 1; }
    ((w % 6)) || echo "compare.sh: waiting for another benchmark to finish (pids $(echo $others))" >&2
    sleep 10
  done
fi

# shellcheck disable=SC2086
set +e
"$BENCH/run.sh" -w "$BENCH_WORK" -o "$OUT_DIR" -l hs13,hs12,res13,hs13c1,h1,h2,bulk,idle,idle2 "$@" \
  $ANCHORS "portcullis=$CMD" \
  ${REDIS_URL:+"portcullis-redis=$ROOT/bench/redis-storage.sh $BIN $REDIS_URL {HOST} {PORT} {CHAIN} {KEY} {DOCROOT} {WORKERS} {RUNDIR}"}
rc=$?
set -e
if [[ -f $OUT_DIR/preflight.txt ]]; then
  echo "---- preflight ($OUT_DIR/preflight.txt)" >&2
  cat "$OUT_DIR/preflight.txt" >&2
  # portcullis block: h1 + h2 answers, 1 MiB checksum twice, TLS 1.3 and 1.2 negotiated
  blk=$(awk '/^== /{on = ($2 == "portcullis")} on' "$OUT_DIR/preflight.txt")
  bad=()
  grep -q -- '--http1.1 /hello: http=1.1 code=200 bytes=13$' <<<"$blk" || bad+=("HTTP/1.1 /hello")
  grep -q -- '--http2 /hello: http=2 code=200 bytes=13$' <<<"$blk" || bad+=("HTTP/2 /hello")
  grep -q -- '--http1.1 /1m: http=1.1 code=200 bytes=1048576 sha256_ok=yes' <<<"$blk" || bad+=("HTTP/1.1 /1m")
  grep -q -- '--http2 /1m: http=2 code=200 bytes=1048576 sha256_ok=yes' <<<"$blk" || bad+=("HTTP/2 /1m")
  tls_ok() { # version-flag substrings...
    local line
    line=$(grep -- "^s_client $1" <<<"$blk") || return 1
    shift
    for s in "$@"; do [[ $line == *"$s"* ]] || return 1; done
  }
  tls_ok -tls1_3 'New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256' 'Server Temp Key: X25519' \
    'Peer signature type: ECDSA' 'ALPN protocol: h2' || bad+=("TLS 1.3 params")
  tls_ok -tls1_2 'New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-GCM-SHA256' 'Server Temp Key: X25519' \
    'Peer signature type: ECDSA' 'ALPN protocol: h2' || bad+=("TLS 1.2 params")
  if ((${#bad[@]})); then
    echo "compare.sh: portcullis preflight FAILED (${bad[*]}); server log: $BENCH_WORK/run/portcullis/server.log" >&2
    [[ $rc != 0 ]] || rc=3
  else
    echo "compare.sh: portcullis preflight OK (h1, h2, 1 MiB sha256, TLS 1.3 + 1.2)" >&2
  fi
fi
echo "compare.sh: results in $OUT_DIR (summary.md, results.csv, meta.txt, preflight.txt); run.sh exit $rc" >&2
exit "$rc"
