#!/usr/bin/python3
"""Plain HTTP/1.1 origin for outpost's proxy tests and demo: echoes each request.

    origin.py [--addr ADDR] [--port PORT] [--name NAME]

Binds ADDR (default "::", dual stack), prints "ready" once listening, then one line per request
("request METHOD TARGET", health checks excluded) so that a test can tell what reached it. Every
response is 200 with a text body: the origin's name, the address the request came from, the
method, the target, each request header as "header Name: value" and the body length. A target
under /delay/MS (e.g. /delay/1500) is answered so after a pause of MS milliseconds (its
"request" line is printed before the pause). Keep-alive; one thread per connection; each
response leaves in one write. Stops on SIGTERM/SIGINT.
"""

import argparse
import http.server
import re
import signal
import socket
import sys
import time

HEALTH_CHECK_AGENT = "outpost-health-check"
DELAY = re.compile(r"/delay/(\d+)(?:[/?]|$)")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "origin"
    sys_version = ""

    def echo(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        if self.headers.get("User-Agent") != HEALTH_CHECK_AGENT:
            print(f"request {self.command} {self.path}", flush=True)
        delay = DELAY.match(self.path)
        if delay:
            time.sleep(int(delay.group(1)) / 1000)
        lines = [
            f"origin {self.server.name}",
            f"peer {self.client_address[0]}",
            f"method {self.command}",
            f"target {self.path}",
        ]
        lines += [f"header {k}: {v}" for k, v in self.headers.items()]
        lines.append(f"body-length {len(body)}")
        text = ("\n".join(lines) + "\n").encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            f"X-Origin: {self.server.name}\r\nContent-Length: {len(text)}\r\n\r\n"
        ).encode()
        self.wfile.write(head if self.command == "HEAD" else head + text)

    def read_chunked(self):
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            chunk = self.rfile.read(size + 2)
            if size == 0:
                return body
            body += chunk[:size]

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = echo

    def log_message(self, fmt, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, port, name):
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.name = name
        super().__init__((addr, port), Handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="::")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--name", default="origin")
    args = p.parse_args()
    server = Server(args.addr, args.port, args.name)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass


if __name__ == "__main__":
    main()
