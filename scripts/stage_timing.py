"""Time to each SSE event of `/v1/chat/stream` at one client, on one keep-alive connection.

Used for the per-stage figures in docs/performance.md:
    python3 scripts/stage_timing.py PORT KEY
Prints p50/p90 of the time from sending the request to `session` (admission), to the first
`delta` (admission plus the model call) and to `done` (the durable commit of the turn).
The first 30 turns warm up and are not counted.
"""
import socket, time, json, sys, statistics
port, key = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
res = {"session": [], "delta": [], "done": []}
for n in range(330):
    body = json.dumps({"message": f"Write a few calm sentences about the sea for reader number {n}.", "max_tokens": 32}).encode()
    req = (f"POST /v1/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    t0 = time.perf_counter(); s.sendall(req); buf = b""; marks = {}
    while b"event: done" not in buf or not buf.endswith(b"0\r\n\r\n"):
        chunk = s.recv(65536)
        if not chunk: break
        buf += chunk; t = time.perf_counter()
        for m in ("session", "delta", "done"):
            if m not in marks and f"event: {m}".encode() in buf: marks[m] = t - t0
    if n >= 30:
        for m in marks: res[m].append(marks[m] * 1e3)
for m, v in res.items():
    v.sort(); print(f"{m:8} p50 {statistics.median(v):.3f} ms  p90 {v[int(len(v)*0.9)]:.3f} ms")
