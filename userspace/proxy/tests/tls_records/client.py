"""A TLS client that completes a real handshake with tlslite-ng, then writes records crafted with
the negotiated keys, and reports what the server did about them.

    client.py --port P --version 1.3|1.2 --cipher aes128gcm CASE...

One connection per case; one line per case on stdout: `CASE OUTCOME`, where OUTCOME is
`response` (an HTTP response came back), `closed` (close_notify), `eof` (TCP closed without an
alert), `alert:N` (a fatal alert, N its description), `warning:N`, `timeout` (nothing within
TIMEOUT seconds: the server hangs), `reset`, or `error:...`. A case named `fin_X` is case X with
its records in the same TCP write as the client's Finished.
"""

import argparse
import socket
import sys

from tlslite.api import HandshakeSettings, TLSConnection
from tlslite.constants import ContentType
from tlslite.errors import TLSAbruptCloseError, TLSLocalAlert, TLSRemoteAlert
from tlslite.messages import Message

# Seconds any one step may take: a server that neither answers nor closes within it hangs.
TIMEOUT = 5

GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
MAX_PLAINTEXT = 2**14
TAG = 16
KEY_UPDATE = 24
KU_NOT_REQUESTED = bytes([KEY_UPDATE, 0, 0, 1, 0])
KU_REQUESTED = bytes([KEY_UPDATE, 0, 0, 1, 1])


class HoldSocket:
    """The socket under tlslite: while `hold` is set, writes wait until the next read (or
    `release`), so that records written after the client's Finished leave with it."""

    def __init__(self, sock):
        self.sock = sock
        self.hold = False
        self.held = bytearray()
        self.before_recv = None

    def send(self, data):
        if self.hold:
            self.held += data
            return len(data)
        return self.sock.send(data)

    def sendall(self, data):
        if self.hold:
            self.held += data
            return None
        return self.sock.sendall(data)

    def release(self):
        if self.held:
            data = bytes(self.held)
            self.held.clear()
            self.sock.sendall(data)

    def recv(self, n):
        if self.before_recv is not None:
            self.before_recv()
        self.release()
        return self.sock.recv(n)

    def __getattr__(self, name):
        return getattr(self.sock, name)


class Client:
    def __init__(self, port, version, cipher, with_finished=None):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.tls13 = version == (3, 4)
        self.hold = HoldSocket(sock)
        self.conn = TLSConnection(self.hold)
        settings = HandshakeSettings()
        settings.minVersion = version
        settings.maxVersion = version
        settings.cipherNames = [cipher]
        if with_finished is not None:
            self.hold.hold = True
            if not self.tls13:
                # TLS 1.2: the client's Finished goes out under its new keys, then it reads the
                # server's; write the records at that read (as a False Start client would).
                def hook():
                    if self.conn._recordLayer._writeState.encContext is not None:
                        self.hold.before_recv = None
                        with_finished(self)
                        self.conn.sock.flush()

                self.hold.before_recv = hook
        self.conn.handshakeClientCert(settings=settings, serverName="localhost")
        if with_finished is not None:
            if self.tls13:
                # TLS 1.3: the Finished is the client's last flight, still held here.
                with_finished(self)
                self.conn.sock.flush()
            self.hold.hold = False
            self.hold.release()

    def record(self, content_type, data, padding=0):
        """One record of `content_type` under the current keys; in TLS 1.3, `padding` zeros
        after the inner content type."""
        layer = self.conn._recordLayer
        layer.padding_cb = (lambda length, ctype, limit: padding) if padding else None
        for _ in layer.sendRecord(Message(content_type, bytearray(data))):
            pass
        layer.padding_cb = None
        self.conn.sock.flush()

    def raw(self, data):
        """Bytes as they are, under no key."""
        self.conn.sock.flush()
        self.hold.sendall(data)

    def move_write_key(self):
        """The client's send key after the KeyUpdate it just wrote."""
        s = self.conn.session
        s.cl_app_secret, s.sr_app_secret = self.conn._recordLayer.calcTLS1_3KeyUpdate_reciever(
            s.cipherSuite, s.cl_app_secret, s.sr_app_secret
        )

    def response(self):
        """Reads one whole HTTP response (its head, and the body its Content-Length tells);
        None at close_notify. TLS errors are raised."""
        got = bytearray()
        while True:
            head, sep, body = bytes(got).partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(body) >= length:
                    if not head.startswith(b"HTTP/1.1 "):
                        raise RuntimeError("not an HTTP response: %r" % head[:40])
                    return head
            data = self.conn.read()
            if not data:
                return None
            got += data

    def outcome(self):
        try:
            return "response" if self.response() is not None else "closed"
        except TLSRemoteAlert as a:
            return ("alert:%d" if a.level == 2 else "warning:%d") % a.description
        except TLSAbruptCloseError:
            return "eof"
        except socket.timeout:
            return "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TLSLocalAlert as a:
            return "error:client-alert-%d" % a.description
        finally:
            self.hold.sock.close()


def padded_to_inner(inner):
    """Padding for a GET whose TLS 1.3 inner plaintext is `inner` bytes long."""
    return inner - len(GET) - 1


CASES = {
    "get": lambda c: c.record(ContentType.application_data, GET),
    "ku_twice": lambda c: c.record(ContentType.handshake, KU_NOT_REQUESTED * 2),
    "ku_split_get": lambda c: (
        c.record(ContentType.handshake, KU_NOT_REQUESTED[:3]),
        c.record(ContentType.handshake, KU_NOT_REQUESTED[3:]),
        c.move_write_key(),
        c.record(ContentType.application_data, GET),
    ),
    "ku_requested_get": lambda c: (
        c.record(ContentType.handshake, KU_REQUESTED),
        c.move_write_key(),
        c.record(ContentType.application_data, GET),
    ),
    "ku_bad_request": lambda c: c.record(ContentType.handshake, bytes([KEY_UPDATE, 0, 0, 1, 2])),
    "ku_long": lambda c: c.record(ContentType.handshake, bytes([KEY_UPDATE, 0, 0, 2, 0, 0])),
    "ku_then_more": lambda c: c.record(ContentType.handshake, KU_NOT_REQUESTED + b"\x18"),
    "ku_interleaved": lambda c: (
        c.record(ContentType.handshake, KU_NOT_REQUESTED[:2]),
        c.record(ContentType.application_data, GET),
    ),
    "finished_again": lambda c: c.record(ContentType.handshake, bytes([20, 0, 0, 32]) + bytes(32)),
    # Ciphertext 2^14 + 257: one byte over the TLS 1.3 limit.
    "overflow_ciphertext13": lambda c: c.record(
        ContentType.application_data, GET, padded_to_inner(MAX_PLAINTEXT + 257 - TAG)
    ),
    # Inner plaintext 2^14 + 2 (padding counts), ciphertext well within its limit.
    "overflow_inner13": lambda c: c.record(
        ContentType.application_data, GET, padded_to_inner(MAX_PLAINTEXT + 2)
    ),
    "max_inner13_get": lambda c: c.record(
        ContentType.application_data, GET, padded_to_inner(MAX_PLAINTEXT + 1)
    ),
    "warning13": lambda c: c.record(ContentType.alert, bytes([1, 42])),
    "user_canceled_get": lambda c: (
        c.record(ContentType.alert, bytes([1, 90])),
        c.record(ContentType.application_data, GET),
    ),
    "fatal": lambda c: c.record(ContentType.alert, bytes([2, 40])),
    "unknown_level": lambda c: c.record(ContentType.alert, bytes([3, 40])),
    "close_notify": lambda c: c.record(ContentType.alert, bytes([1, 0])),
    "alert_three_bytes": lambda c: c.record(ContentType.alert, bytes([2, 40, 0])),
    "short": lambda c: c.raw(bytes([23, 3, 3, 0, 10]) + b"\x5a" * 10),
    "warning12_get": lambda c: (
        c.record(ContentType.alert, bytes([1, 100])),
        c.record(ContentType.application_data, GET),
    ),
    "overflow_plain12": lambda c: c.record(ContentType.application_data, b"x" * (MAX_PLAINTEXT + 1)),
    # A header announcing 2^14 + 2049 bytes: over the TLS 1.2 limit before any is read.
    "overflow_ciphertext12": lambda c: c.raw(bytes([23, 3, 3, 0x48, 0x01])),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", choices=["1.2", "1.3"], required=True)
    p.add_argument("--cipher", default="aes128gcm")
    p.add_argument("cases", nargs="+")
    a = p.parse_args()
    version = (3, 4) if a.version == "1.3" else (3, 3)
    for name in a.cases:
        with_finished = name.startswith("fin_")
        steps = CASES[name[4:] if with_finished else name]
        try:
            if with_finished:
                c = Client(a.port, version, a.cipher, with_finished=steps)
            else:
                c = Client(a.port, version, a.cipher)
                # One exchange first, so the records below arrive well after the handshake.
                c.record(ContentType.application_data, GET)
                if c.response() is None:
                    raise RuntimeError("the first request got close_notify")
                steps(c)
            result = c.outcome()
        except Exception as e:  # reported, never hidden: the test shows the case and this
            result = "error:%s:%s" % (type(e).__name__, str(e).replace(" ", "_")[:80])
        print(name, result, flush=True)


if __name__ == "__main__":
    sys.exit(main())
