#!/usr/bin/env python3
"""Memory of idle HTTP/3 connections: opens N QUIC connections to a server, each makes one
GET and then stays open and idle; prints the server's RSS before, with them open, and after
they are closed (the server's PID is given).

usage: h3idle.py HOST PORT PID [N] [PATH] [SETTLE_SECS]
(SETTLE_SECS, default 3: how long after the connections close the last RSS is read.)
Needs aioquic (the acceptance oracles' venv: /tmp/tls-oracles/venv-h3/bin/python).
Compare with run.sh's idle2 (HTTP/2 after the preface) in the same sitting.
"""
import asyncio
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

host, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
path = sys.argv[5] if len(sys.argv) > 5 else "/hello"
settle = float(sys.argv[6]) if len(sys.argv) > 6 else 3


def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.h3 = H3Connection(self._quic)
        self.done = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        for e in self.h3.handle_event(event):
            if isinstance(e, (HeadersReceived, DataReceived)) and e.stream_ended:
                if not self.done.done():
                    self.done.set_result(True)

    async def get(self):
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", b"localhost"), (b":path", path.encode())],
                             end_stream=True)
        self.transmit()
        await asyncio.wait_for(self.done, 10)


async def one(opened, release):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE,
                            server_name="localhost", idle_timeout=600)
    async with connect(host, port, configuration=cfg, create_protocol=Client) as c:
        await c.get()
        opened.append(1)
        await release.wait()


async def main():
    await asyncio.sleep(0.5)
    before = rss_kib()
    opened, release = [], asyncio.Event()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(opened, release)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    for _ in range(600):
        if len(opened) >= n:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    during = rss_kib()
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(settle)
    after = rss_kib()
    per = (during - before) / max(len(opened), 1)
    print(f"h3idle conns={len(opened)} rss_before_kib={before} rss_open_kib={during} "
          f"rss_after_kib={after} per_conn_kib={per:.1f}")


asyncio.run(main())
