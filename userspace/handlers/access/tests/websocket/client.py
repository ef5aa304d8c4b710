"""A WebSocket client for websocket.rs: connects through the edge to a protected app.

    client.py --port P --host H [--cookie VALUE] [--seconds S]

Connects to wss://H:P/echo (the TCP connection goes to 127.0.0.1:P; certificate not verified:
the edge's is self-signed), with `Cookie: __Host-outpost-token=VALUE` when given, prints
`open` once the handshake is done, then sends a message every 100 ms and reads its echo, for at
most S seconds. Prints one JSON object on its last line: {"open": bool, "status": the refused
handshake's status or null, "echoed": messages echoed, "closed_after": seconds from open to the
close or null, "code": the close code or null}. Every wait is bounded.
"""

import argparse
import asyncio
import json
import ssl
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI


async def main(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {}
    if args.cookie:
        headers["Cookie"] = f"__Host-outpost-token={args.cookie}"
    out = {"open": False, "status": None, "echoed": 0, "closed_after": None, "code": None}
    try:
        ws = await asyncio.wait_for(
            connect(
                f"wss://{args.host}:{args.port}/echo",
                ssl=ctx,
                host="127.0.0.1",
                port=args.port,
                additional_headers=headers,
                open_timeout=10,
            ),
            10,
        )
    except InvalidStatus as e:
        out["status"] = e.response.status_code
        print(json.dumps(out), flush=True)
        return
    except InvalidURI:
        # A redirect (to the login page) the library tried to follow: not a socket.
        out["status"] = 302
        print(json.dumps(out), flush=True)
        return
    out["open"] = True
    print("open", flush=True)
    opened = time.monotonic()
    try:
        while time.monotonic() - opened < args.seconds:
            await ws.send(f"m{out['echoed']}")
            await asyncio.wait_for(ws.recv(), 5)
            out["echoed"] += 1
            await asyncio.sleep(0.1)
        await ws.close()
    except (ConnectionClosed, asyncio.TimeoutError, OSError) as e:
        out["closed_after"] = round(time.monotonic() - opened, 3)
        out["code"] = getattr(getattr(e, "rcvd", None), "code", None)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--cookie")
    p.add_argument("--seconds", type=float, default=20)
    asyncio.run(main(p.parse_args()))
