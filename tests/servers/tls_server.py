#!/usr/bin/python3
"""HTTPS test server for outpost's namespace tests: accepts TLS 1.0 to 1.3.

    tls_server.py [--addr ADDR] [--port PORT] [--timeout SECS]

Binds ADDR (default "::", dual stack: IPv4 and IPv6 on one socket), generates a throwaway
self-signed certificate for CN=edge.test, prints "ready" once listening, and answers every GET
with a short body naming the negotiated TLS version. One thread per connection: a connection
whose hello outpost dropped stays open on this side until its timeout, and must not hold up
the others. Stops on SIGTERM/SIGINT.
"""

import argparse
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import warnings

# TLS 1.0/1.1 are deprecated in Python; accepting them is the point here.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def make_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Legacy versions must complete when outpost lets them through (observe mode).
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with tempfile.TemporaryDirectory(prefix="outpost-tls-") as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-subj", "/CN=edge.test", "-days", "1", "-keyout", key, "-out", cert],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        # Loaded at once: the files can go (nothing is left behind if we are killed).
        ctx.load_cert_chain(cert, key)
    return ctx


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = f"hello from edge.test over {self.request.version()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, port, ctx, timeout):
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.ctx = ctx
        self.conn_timeout = timeout
        super().__init__((addr, port), Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def finish_request(self, request, client_address):
        # The handshake runs here, in the connection's own thread, never in the accept loop.
        request.settimeout(self.conn_timeout)
        tls = None
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            if tls is not None:
                tls.close()

    def handle_error(self, request, client_address):
        # Refused, reset and timed-out handshakes are what the tests provoke: one line each.
        err = sys.exc_info()[1]
        print(f"connection from {client_address[0]}: {err!r}", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="::")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server(args.addr, args.port, make_context(), args.timeout)
    print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
