#!/usr/bin/env python3
# pxhold.py HOST PORT N PATH: N TLS keep-alive connections, each after one GET PATH (HTTP/1.1),
# held open until stdin EOF. Prints "ready=N fail=F" like tlsload's hold mode.
import socket, ssl, sys
host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
conns, fail = [], 0
req = ("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode()
for i in range(n):
    try:
        s = socket.create_connection((host, port), timeout=10)
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += t.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        cl = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                cl = int(line.split(b":")[1])
        while len(body) < cl:
            body += t.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            fail += 1
        conns.append(t)
    except Exception as e:
        fail += 1
print("ready=%d fail=%d" % (len(conns), fail), flush=True)
sys.stdin.read()
closed = 0
for t in conns:
    t.setblocking(False)
    try:
        if t.recv(1) == b"":
            closed += 1
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    except Exception:
        closed += 1
print("mode=hold opened=%d closed_by_peer=%d" % (len(conns), closed), flush=True)
