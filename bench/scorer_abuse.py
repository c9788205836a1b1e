"""The extender under abuse from anyone who reaches its port (issue 13), as its command
(`gpulet scorer serve --standalone` on loopback), with figures:

- peak RSS (VmHWM) after a hostile body: 120 MB of `{},` (under the 128 MiB size limit);
- latency of a small filter while two large bodies (40 MB of `{},`) are sent at once;
- 200 concurrent `/healthz`: answered, timed out;
- 50 slow connections (idle, or a header line and then nothing): when the server lets each
  go, and a `/healthz` latency meanwhile.

Run: .venv/bin/python bench/scorer_abuse.py [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def start() -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [sys.executable, "-m", "gpulet", "scorer", "serve", "--standalone"]
    proc = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the extender did not start") from None
            time.sleep(0.05)


def peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) >> 10
    return -1


def post(port: int, body: bytes, path: str = "/filter", timeout: float = 60) -> tuple[int, bytes]:
    """The status and body of a POST of `body`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = resp.status, resp.read()
    conn.close()
    return answer


def healthz(port: int, timeout: float = 20) -> tuple[int, float]:
    """The status of a GET of /healthz, and how long it took."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.monotonic() - started


def concurrent_healthz(port: int, count: int) -> dict[str, int]:
    """`count` /healthz at once: how many were answered 200, and how many timed out (or
    were refused)."""
    results: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            result = "answered" if healthz(port)[0] == 200 else "other"
        except OSError:
            result = "timed_out"
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"answered": results.count("answered"), "timed_out": results.count("timed_out")}


def hostile(size: int) -> bytes:
    return b"[" + b"{}," * (size // 3 - 1) + b"{}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}

    def record(key: str, value: Any) -> None:
        out[key] = value
        if not args.json:
            print(f"{key}: {value}", flush=True)

    record("machine", f"{platform.machine()} {os.cpu_count()} CPUs")
    proc, port = start()
    try:
        record("rss_idle_mib", peak_rss_mib(proc.pid))
        record("hostile_120mb_status", post(port, hostile(120_000_000))[0])
        record("rss_after_hostile_mib", peak_rss_mib(proc.pid))

        small = json.dumps({"Pod": {}, "NodeNames": []}).encode()
        lat: list[float] = []
        for _ in range(5):
            big = [threading.Thread(target=post, args=(port, hostile(40_000_000))) for _ in "ab"]
            for t in big:
                t.start()
            time.sleep(0.05)
            started = time.monotonic()
            post(port, small)
            lat.append(time.monotonic() - started)
            for t in big:
                t.join()
        record(
            "small_filter_beside_2_large_ms",
            {"median": round(statistics.median(lat) * 1000, 1), "max": round(max(lat) * 1000, 1)},
        )

        record("concurrent_200_healthz", concurrent_healthz(port, 200))

        slow = []
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            if i % 2:
                s.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        opened = time.monotonic()
        record("healthz_beside_50_slow_ms", round(healthz(port)[1] * 1000, 1))
        held = []
        for s in slow:
            s.recv(1)
            held.append(time.monotonic() - opened)
            s.close()
        record("slow_connections_held_s", {"max": round(max(held), 1), "count": len(held)})
    finally:
        proc.terminate()
        proc.wait(10)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
