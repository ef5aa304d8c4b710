"""A real WebSocket origin and a real WebSocket client (the `websockets` library), for
websocket.rs.

    ws.py origin --port P
        Serves on 127.0.0.1:P and prints `listening` once bound. Paths:
        /echo     echoes every message, text as text and binary as binary
        /headers  sends the handshake request's fields as one JSON text message, then echoes
        /ping     pings the client, sends `pong <seconds>` once the pong is back, then echoes
        /close    reads `CODE REASON`, then closes with that code and reason
        /die      echoes one message, then the process exits (the origin dies mid-stream)
        /refuse   answers the handshake with 403
        /page     an HTML page whose script opens a WebSocket to /echo (for a browser)
        anything else without `Upgrade`: 200 with a short text body

    ws.py client SCENARIO --port P
        Connects to wss://127.0.0.1:P (certificate not verified: the edge's is self-signed)
        and prints one JSON object on its last line: what the scenario saw. Scenarios:
        echo, close, die, refuse, idle, drain (see below).

Every wait is bounded (TIMEOUT): a server that neither answers nor closes makes the scenario
report `timeout`, never hang.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.datastructures import Headers
from websockets.http11 import Response

# Seconds any one step may take.
TIMEOUT = 10
# Messages up to 4 MiB either way (the tests send 1 MiB ones).
MAX_SIZE = 4 * 2**20
MIB = 2**20

PAGE = """<!doctype html>
<title>ws</title>
<pre id="log"></pre>
<script>
const ws = new WebSocket(`wss://${location.host}/echo`);
ws.binaryType = "arraybuffer";
window.result = new Promise((resolve) => {
  const seen = [];
  ws.onopen = () => { ws.send("hello from the page"); ws.send(new Uint8Array([1, 2, 3, 255])); };
  ws.onmessage = (e) => {
    seen.push(typeof e.data === "string" ? e.data : Array.from(new Uint8Array(e.data)).join(","));
    if (seen.length === 2) ws.close(4001, "page done");
  };
  ws.onclose = (e) => resolve({ seen, code: e.code, reason: e.reason });
  ws.onerror = () => seen.push("error");
});
</script>
"""


# --- origin -----------------------------------------------------------------------------------


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def handler(ws):
    path = ws.request.path
    try:
        if path == "/headers":
            fields = {}
            for name, value in ws.request.headers.raw_items():
                fields.setdefault(name.lower(), []).append(value)
            await ws.send(json.dumps(fields))
            await echo(ws)
        elif path == "/ping":
            started = time.monotonic()
            pong = await ws.ping(b"from the origin")
            await asyncio.wait_for(pong, TIMEOUT)
            await ws.send(f"pong {time.monotonic() - started:.3f}")
            await echo(ws)
        elif path == "/close":
            msg = await ws.recv()
            code, reason = msg.split(" ", 1)
            await ws.close(int(code), reason)
        elif path == "/die":
            msg = await ws.recv()
            await ws.send(msg)
            # The echo is in the kernel's send buffer; the process goes without a close frame.
            os._exit(0)
        else:
            await echo(ws)
    except ConnectionClosed:
        pass


def select_subprotocol(connection, offered):
    # `chat` when offered; none otherwise (websockets refuses a client offering none when the
    # server lists subprotocols).
    return "chat" if "chat" in offered else None


def process_request(connection, request):
    if request.path == "/refuse":
        return connection.respond(403, "refused by the origin\n")
    if request.path == "/page":
        headers = Headers([("Content-Type", "text/html; charset=utf-8")])
        return Response(200, "OK", headers, PAGE.encode())
    if "upgrade" not in request.headers:
        return connection.respond(200, f"plain {request.path}\n")
    return None


async def origin(port):
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        max_size=MAX_SIZE,
        ping_interval=None,
    ) as server:
        print("listening", flush=True)
        await server.serve_forever()


# --- client -----------------------------------------------------------------------------------


def tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def dial(port, path, **kw):
    return connect(
        f"wss://127.0.0.1:{port}{path}",
        ssl=tls(),
        max_size=MAX_SIZE,
        ping_interval=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        **kw,
    )


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


async def scenario_echo(port):
    out = {}
    async with dial(port, "/headers", subprotocols=["chat"]) as ws:
        out["subprotocol"] = ws.subprotocol
        out["response_fields"] = sorted(k.lower() for k in ws.response.headers.keys())
        out["request_fields"] = json.loads(await recv(ws))
        await ws.send("hello")
        out["text"] = await recv(ws)
        await ws.send(b"\x00\x01\xfe\xff")
        out["binary"] = list(await recv(ws))
        big_text = "".join(chr(0x41 + i % 26) for i in range(MIB))
        await ws.send(big_text)
        got = await recv(ws)
        out["big_text"] = isinstance(got, str) and got == big_text
        big_binary = os.urandom(MIB)
        await ws.send(big_binary)
        got = await recv(ws)
        out["big_binary"] = isinstance(got, bytes) and got == big_binary
        # Several messages in flight at once, both ways.
        for i in range(20):
            await ws.send(f"m{i}")
        out["burst"] = [await recv(ws) for _ in range(20)] == [f"m{i}" for i in range(20)]
        pong = await ws.ping(b"from the client")
        started = time.monotonic()
        await asyncio.wait_for(pong, TIMEOUT)
        out["client_ping"] = time.monotonic() - started
        await ws.close(4000, "client done")
        out["close_code"] = ws.close_code
        out["close_reason"] = ws.close_reason
    async with dial(port, "/ping") as ws:
        out["origin_ping"] = await recv(ws)
    return out


async def scenario_close(port):
    async with dial(port, "/close") as ws:
        await ws.send("4321 the origin says goodbye")
        try:
            await recv(ws)
            return {"error": "a message instead of a close"}
        except ConnectionClosed as e:
            rcvd = e.rcvd
            return {
                "code": rcvd.code if rcvd else None,
                "reason": rcvd.reason if rcvd else None,
            }


async def scenario_die(port):
    async with dial(port, "/die") as ws:
        await ws.send("last words")
        out = {"echo": await recv(ws)}
        started = time.monotonic()
        try:
            await recv(ws)
            out["end"] = "message"
        except ConnectionClosed as e:
            out["end"] = "closed"
            out["rcvd"] = e.rcvd.code if e.rcvd else None
        except asyncio.TimeoutError:
            out["end"] = "timeout"
        out["seconds"] = time.monotonic() - started
        return out


async def scenario_refuse(port):
    try:
        async with dial(port, "/refuse"):
            return {"error": "the handshake succeeded"}
    except InvalidStatus as e:
        return {"status": e.response.status_code, "body": e.response.body.decode()}


async def scenario_idle(port):
    async with dial(port, "/echo") as ws:
        await ws.send("then silence")
        out = {"echo": await recv(ws)}
        started = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), 30)
            out["end"] = "message"
        except ConnectionClosed as e:
            out["end"] = "closed"
        except asyncio.TimeoutError:
            out["end"] = "timeout"
        out["seconds"] = time.monotonic() - started
        return out


async def scenario_drain(port):
    """Echoes a message every 100 ms until the connection ends; prints `open` once the first
    echo came back (the test then sends SIGTERM to the edge)."""
    async with dial(port, "/echo") as ws:
        await ws.send("first")
        await recv(ws)
        print("open", flush=True)
        started = time.monotonic()
        echoes = 0
        end = "limit"
        for i in range(600):
            try:
                await ws.send(f"n{i}")
                await recv(ws)
                echoes += 1
            except ConnectionClosed:
                end = "closed"
                break
            except asyncio.TimeoutError:
                end = "timeout"
                break
            await asyncio.sleep(0.1)
        return {"end": end, "echoes": echoes, "seconds": time.monotonic() - started}


SCENARIOS = {
    "echo": scenario_echo,
    "close": scenario_close,
    "die": scenario_die,
    "refuse": scenario_refuse,
    "idle": scenario_idle,
    "drain": scenario_drain,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["origin", "client"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS))
    a = p.parse_intermixed_args()
    if a.role == "origin":
        asyncio.run(origin(a.port))
        return
    try:
        out = asyncio.run(SCENARIOS[a.scenario](a.port))
    except Exception as e:  # reported, for the test to show with its input
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
