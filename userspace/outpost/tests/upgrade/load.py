"""Steady HTTPS load for the upgrade test: KEEP clients on keep-alive connections and FRESH
clients opening a new connection per request, each request a GET that must end in 200, until
the file STOP exists (or SECONDS, a bound). Any other outcome (an error, a reset, a connection
closed without an answer) is a failure. Prints `started` once the first request succeeded, then
at the end one JSON object: counts of ok and failed requests, and the failures' kinds.

    load.py --port P --stop FILE --seconds S [--keep 4] [--fresh 2]
"""

import argparse
import http.client
import json
import os
import ssl
import sys
import threading
import time
from collections import Counter

TIMEOUT = 5


def context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client(port, stop, until, fresh, stats, lock):
    ctx = context()
    conn = None
    n = 0
    while time.monotonic() < until and not os.path.exists(stop):
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=ctx)
        n += 1
        try:
            # http.client opens a new connection by itself after a `Connection: close`.
            conn.request("GET", f"/load/{n}", headers={"Host": "localhost"})
            resp = conn.getresponse()
            resp.read()
            outcome = "ok" if resp.status == 200 else f"status {resp.status}"
        except Exception as e:  # each kind is reported
            outcome = type(e).__name__
            conn.close()
            conn = None
        with lock:
            stats[outcome] += 1
            if outcome == "ok" and stats["ok"] == 1:
                print("started", flush=True)
    if conn is not None:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stop", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--keep", type=int, default=4)
    p.add_argument("--fresh", type=int, default=2)
    a = p.parse_args()
    until = time.monotonic() + a.seconds
    stats, lock = Counter(), threading.Lock()
    threads = [
        threading.Thread(target=client, args=(a.port, a.stop, until, i >= a.keep, stats, lock))
        for i in range(a.keep + a.fresh)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = stats.pop("ok", 0)
    print(json.dumps({"ok": ok, "failed": sum(stats.values()), "failures": dict(stats)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
