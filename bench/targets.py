#!/usr/bin/env python3
"""targets.py OUTDIR [OUTDIR...] - portcullis against the anchors: the per-core table and the targets.

Reads run.sh's results.csv of one or more runs (e.g. two runs of bench/compare.sh) and prints
markdown: per-server-core figures of the pinned mode (median over runs, min..max in parentheses),
idle memory, RSS after start, the hs13c1 p99, then each target of issue 5 with its ratio to the
best anchor of the same runs. MODE=unpinned for the unpinned mode.
Per-core = raw rate / the server's CPU share in that measurement (as lib/report.py does).
"""
import csv
import os
import statistics
import sys

OURS = "portcullis"
MODE = os.environ.get("MODE", "pinned")


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def load(dirs):
    rows = []
    for d in dirs:
        with open(os.path.join(d, "results.csv")) as f:
            for r in csv.DictReader(f):
                r["run"] = os.path.basename(os.path.normpath(d))
                rows.append(r)
    return rows


def per_core(rows, server, metric, mode=MODE):
    out = []
    for r in rows:
        if r["server"] == server and r["metric"] == metric and r["mode"] == mode:
            v, c = fnum(r["value"]), fnum(r["server_cpu_pct"])
            if v is not None and c:
                out.append(v / (c / 100))
    return out


def field(rows, server, metric, name, mode=MODE):
    return [fnum(r[name]) for r in rows if r["server"] == server and r["metric"] == metric
            and r["mode"] == mode and fnum(r[name]) is not None]


def rss_after_start(rows, server):
    # RSS before the first measurement of each run: after start + the 1 s wrk warm-up
    firsts = {}
    for r in rows:
        if r["server"] == server and r["mode"] != "all" and r["run"] not in firsts:
            v = fnum(r["rss_before_kib"])
            if v is not None:
                firsts[r["run"]] = v / 1024
    return list(firsts.values())


def med(vals):
    return statistics.median(vals) if vals else None


def cell(vals, fmt):
    if not vals:
        return "-"
    m = fmt % med(vals)
    if len(vals) > 1 and fmt % min(vals) != fmt % max(vals):
        m += " (" + (fmt % min(vals)) + ".." + (fmt % max(vals)) + ")"
    return m


LINES = [
    ("full TLS 1.3 handshakes + GET", "full_hs_tls13", "pc", "%.0f"),
    ("full TLS 1.2 handshakes + GET", "full_hs_tls12", "pc", "%.0f"),
    ("resumed TLS 1.3 handshakes + GET", "resumed_hs_tls13", "pc", "%.0f"),
    ("HTTP/1.1 keep-alive req (/hello)", "h1_keepalive_rps", "pc", "%.0f"),
    ("HTTP/2 req (/hello)", "h2_rps", "pc", "%.0f"),
    ("bulk GB (HTTP/1.1 /1m)", "bulk_h1_1MiB", "pc", "%.2f"),
    ("KiB per idle TLS conn, HTTP/1.1", "idle_conn_mem_http1.1", "value", "%.1f"),
    ("KiB per idle TLS conn, HTTP/2", "idle_conn_mem_h2", "value", "%.1f"),
    ("RSS after start + warm-up [MiB]", None, "rss", "%.1f"),
    ("hs13c1 p99 [ms] (1 conn at a time)", "full_hs_tls13_one_at_a_time", "p99", "%.2f"),
    ("hs13c1 p50 [ms]", "full_hs_tls13_one_at_a_time", "p50", "%.2f"),
]


def values(rows, s, metric, kind):
    if kind == "pc":
        return per_core(rows, s, metric)
    if kind == "value":
        return field(rows, s, metric, "value")
    if kind == "rss":
        return rss_after_start(rows, s)
    if kind == "p99":
        return field(rows, s, metric, "p99_ms")
    if kind == "p50":
        return field(rows, s, metric, "p50_ms")
    raise ValueError(kind)


def main():
    dirs = sys.argv[1:]
    if not dirs:
        print(__doc__)
        sys.exit(2)
    rows = load(dirs)
    servers = []
    for r in rows:
        if r["server"] not in servers:
            servers.append(r["server"])
    anchors = [s for s in servers if s != OURS]
    out = ["| per server CPU-core-second, " + MODE + " (median of %d runs, min..max) | %s |" % (len(dirs), " | ".join(servers)),
           "|---|" + "---|" * len(servers)]
    for label, metric, kind, fmt in LINES:
        out.append("| " + label + " | " + " | ".join(cell(values(rows, s, metric, kind), fmt) for s in servers) + " |")
    print("\n".join(out))

    def m(s, metric, kind="pc"):
        return med(values(rows, s, metric, kind))

    def rng(s, metric, kind="pc"):
        v = values(rows, s, metric, kind)
        return (min(v), max(v)) if v else (None, None)

    # Issue 5's targets: every ratio is to the best anchor of the same runs.
    def best(metric, kind="pc", low=False):
        have = [a for a in anchors if m(a, metric, kind) is not None]
        if not have:
            return "-", None
        pick = (min if low else max)(have, key=lambda a: m(a, metric, kind))
        return pick, m(pick, metric, kind)

    checks = []
    for label, metric, kind, need, how in [
        ("full TLS 1.3 handshakes + GET /core", "full_hs_tls13", "pc", 2.4, "ge"),
        ("full TLS 1.2 handshakes + GET /core", "full_hs_tls12", "pc", 2.0, "ge"),
        ("resumed TLS 1.3 + GET /core", "resumed_hs_tls13", "pc", 2.5, "ge"),
        ("HTTP/1.1 keep-alive req/core", "h1_keepalive_rps", "pc", 1.5, "ge"),
        ("HTTP/2 req/core", "h2_rps", "pc", 1.0, "ge"),
        ("bulk 1 MiB HTTP/1.1 GB/core", "bulk_h1_1MiB", "pc", 2.0, "ge"),
        ("KiB per idle TLS conn (HTTP/1.1)", "idle_conn_mem_http1.1", "value", 0.6, "le"),
        ("KiB per idle TLS conn (HTTP/2)", "idle_conn_mem_h2", "value", 0.6, "le"),
        ("RSS after start", None, "rss", 0.5, "le"),
        ("hs13c1 p99 ms", "full_hs_tls13_one_at_a_time", "p99", 1.0, "le"),
    ]:
        who, ref = best(metric, kind, low=(how == "le"))
        checks.append(("%s vs best (%s)" % (label, who), m(OURS, metric, kind), ref, need, how))
    print()
    print("| target | portcullis | reference | ratio | needed | result |")
    print("|---|---|---|---|---|---|")
    for name, ours, ref, need, how in checks:
        if ours is None or ref is None or ref == 0:
            print("| %s | %s | %s | - | - | no data |" % (name, ours, ref))
            continue
        ratio = ours / ref
        ok = ratio >= need if how == "ge" else ratio <= need
        print("| %s | %s | %s | %.2f | %s %.1f | %s |" % (
            name, fmtv(ours), fmtv(ref), ratio, "≥" if how == "ge" else "≤", need, "**met**" if ok else "**MISSED**"))


def fmtv(v):
    return "%.2f" % v if v < 100 else "%.0f" % v


if __name__ == "__main__":
    main()
