#!/usr/bin/env python3
"""Regenerates the JA4 fixture table: real ClientHellos of the clients on this machine, and the
JA4 the reference implementation computes for exactly those bytes.

    python3 userspace/clients/testdata/capture.py            # every client found
    python3 userspace/clients/testdata/capture.py --keep     # reuse hellos/*.bin, recompute JA4s

Needs root (tcpdump on `lo`), and: tcpdump, tshark (Debian), PyPI `ja4plus` (the reference),
plus whichever clients are installed (curl, openssl, gnutls-cli, wget, chromium, node, nghttp,
h2load, wrk, python's ssl). A client that is missing is skipped and said so.

How:
1. Each client connects to a listener on 127.0.0.1 that reads one complete ClientHello (its
   TLS records, or an SSLv2-format record), stores those bytes in `hellos/NAME.bin` and closes.
   Only the first connection of a client is kept (Chromium opens more, each with a fresh GREASE
   and extension order).
2. Every stored hello, and those of `ebpf/outpost-common/testdata/clienthello/`, is sent again
   over loopback to a listener while tcpdump records `lo`; so the reference reads the very bytes
   the test reads, in a pcap, as a monitor would.
3. `ja4plus` (FoxIO's JA4 over scapy) computes JA4 and JA4_r from that pcap. As a second opinion,
   tshark dissects the same pcap and a JA4 is built here from its fields (the spec's rules,
   written once below); the two must agree or the script stops.
4. `manifest.json` lists every entry: client, its version, how it was run, the file, the JA4s.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
HELLOS = HERE / "hellos"
COMMON = ROOT / "ebpf/outpost-common/testdata/clienthello"
SNI = "clients.outpost.test"
MAX_HELLO = 1 << 16


def hello_end(buf: bytes):
    """Length of the first complete ClientHello in `buf` (its whole records), or None."""
    if len(buf) >= 2 and buf[0] & 0x80 and buf[0] != 0x80 | 0x16:
        n = ((buf[0] & 0x7F) << 8 | buf[1]) + 2  # SSLv2-format record
        return n if len(buf) >= n else None
    if len(buf) < 9 or buf[0] != 0x16:
        return None
    need = int.from_bytes(buf[6:9], "big") + 4  # handshake header + body
    pos, got = 0, 0
    while got < need:
        if len(buf) < pos + 5:
            return None
        rlen = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if len(buf) < pos + 5 + rlen:
            return None
        got += rlen
        pos += 5 + rlen
    return pos


class Listener:
    """Accepts connections on 127.0.0.1; keeps the first complete hello that `pick` accepts."""

    def __init__(self, pick=lambda hello: True):
        self.pick = pick
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hello = None
        self.got = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        conn.settimeout(5)
        buf = b""
        try:
            while len(buf) < MAX_HELLO:
                end = hello_end(buf)
                if end is not None:
                    if self.hello is None and self.pick(buf[:end]):
                        self.hello = buf[:end]
                        self.got.set()
                    break
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def version_of(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, shell=True)
        line = (out.stdout or out.stderr).strip().splitlines()
        return line[0].strip() if line else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


PY_CLIENT = """
import socket, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode != "default":
    v = {"tls1_0": ssl.TLSVersion.TLSv1, "tls1_2": ssl.TLSVersion.TLSv1_2}[mode]
    ctx.minimum_version = ctx.maximum_version = v
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
s = socket.create_connection(("127.0.0.1", port), timeout=3)
try:
    ctx.wrap_socket(s, server_hostname=sys.argv[3])
except (OSError, ssl.SSLError):
    pass
"""

NODE_CLIENT = """
const tls = require('tls');
const s = tls.connect({host: '127.0.0.1', port: +process.argv[1], servername: process.argv[2],
                       rejectUnauthorized: false});
s.on('error', () => process.exit(0));
s.on('close', () => process.exit(0));
"""

CURL_VERSION = "curl --version | head -1 | cut -d' ' -f1,2,4"
URL = f"https://{SNI}:{{port}}/"
CURL = f"curl -sk --connect-timeout 3 --max-time 4 --resolve {SNI}:{{port}}:127.0.0.1"
CHROMIUM = (
    "chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
    "--disable-background-networking --disable-component-update --disable-sync "
    f"--user-data-dir={{tmp}} --host-resolver-rules='MAP {SNI} 127.0.0.1' --dump-dom "
)

# name: (binary, version command, client command, note)
CLIENTS = {
    "curl-default": ("curl", CURL_VERSION, f"{CURL} {URL}", "curl, defaults (ALPN h2)"),
    "curl-http1_1": ("curl", CURL_VERSION, f"{CURL} --http1.1 {URL}", "curl --http1.1"),
    "curl-tls1_0": ("curl", CURL_VERSION,
                    f"{CURL} --tlsv1.0 --tls-max 1.0 --ciphers DEFAULT@SECLEVEL=0 {URL}",
                    "curl --tlsv1.0 --tls-max 1.0 --ciphers DEFAULT@SECLEVEL=0"),
    "curl-tls1_1": ("curl", CURL_VERSION,
                    f"{CURL} --tlsv1.1 --tls-max 1.1 --ciphers DEFAULT@SECLEVEL=0 {URL}",
                    "curl --tlsv1.1 --tls-max 1.1 --ciphers DEFAULT@SECLEVEL=0"),
    "curl-tls1_2": ("curl", CURL_VERSION, f"{CURL} --tlsv1.2 --tls-max 1.2 {URL}",
                    "curl --tlsv1.2 --tls-max 1.2"),
    "curl-tls1_3": ("curl", CURL_VERSION, f"{CURL} --tlsv1.3 {URL}", "curl --tlsv1.3"),
    "openssl-default": ("openssl", "openssl version | cut -d' ' -f1,2",
                        "openssl s_client -connect 127.0.0.1:{port} </dev/null",
                        "openssl s_client, defaults, to an address (no SNI)"),
    "openssl-sni-alpn": ("openssl", "openssl version | cut -d' ' -f1,2",
                         f"openssl s_client -connect 127.0.0.1:{{port}} -servername {SNI} "
                         "-alpn h2,http/1.1 </dev/null",
                         "openssl s_client -servername -alpn h2,http/1.1"),
    "openssl-tls1": ("openssl", "openssl version | cut -d' ' -f1,2",
                     "openssl s_client -connect 127.0.0.1:{port} -tls1 </dev/null",
                     "openssl s_client -tls1"),
    "openssl-tls1_1": ("openssl", "openssl version | cut -d' ' -f1,2",
                       "openssl s_client -connect 127.0.0.1:{port} -tls1_1 </dev/null",
                       "openssl s_client -tls1_1"),
    "openssl-tls1_2": ("openssl", "openssl version | cut -d' ' -f1,2",
                       "openssl s_client -connect 127.0.0.1:{port} -tls1_2 </dev/null",
                       "openssl s_client -tls1_2"),
    "openssl-tls1_3": ("openssl", "openssl version | cut -d' ' -f1,2",
                       "openssl s_client -connect 127.0.0.1:{port} -tls1_3 </dev/null",
                       "openssl s_client -tls1_3"),
    "python-default": (sys.executable, f"{sys.executable} -c 'import sys,ssl;"
                       "print(\"Python\",sys.version.split()[0],\"/\",ssl.OPENSSL_VERSION)'",
                       f"{sys.executable} -c '{{py}}' {{port}} default {SNI}",
                       "python ssl.create_default_context(), server_hostname"),
    "python-tls1_0": (sys.executable, f"{sys.executable} -c 'import sys,ssl;"
                      "print(\"Python\",sys.version.split()[0],\"/\",ssl.OPENSSL_VERSION)'",
                      f"{sys.executable} -c '{{py}}' {{port}} tls1_0 {SNI}",
                      "python ssl, min = max = TLSv1, DEFAULT:@SECLEVEL=0"),
    "python-tls1_2": (sys.executable, f"{sys.executable} -c 'import sys,ssl;"
                      "print(\"Python\",sys.version.split()[0],\"/\",ssl.OPENSSL_VERSION)'",
                      f"{sys.executable} -c '{{py}}' {{port}} tls1_2 {SNI}",
                      "python ssl, min = max = TLSv1_2, DEFAULT:@SECLEVEL=0"),
    "chromium": ("chromium", "chromium --version 2>/dev/null | cut -d' ' -f1,2", f"{CHROMIUM} {URL}",
                 "chromium --headless (TESTBED.md flags) --dump-dom, name mapped to 127.0.0.1"),
    "gnutls-default": ("gnutls-cli", "gnutls-cli --version",
                       f"gnutls-cli --insecure --sni-hostname {SNI} -p {{port}} 127.0.0.1 "
                       "</dev/null", "gnutls-cli --insecure --sni-hostname"),
    "gnutls-tls1_0": ("gnutls-cli", "gnutls-cli --version",
                      f"gnutls-cli --insecure --sni-hostname {SNI} "
                      "--priority 'NORMAL:-VERS-ALL:+VERS-TLS1.0' -p {port} 127.0.0.1 </dev/null",
                      "gnutls-cli --priority NORMAL:-VERS-ALL:+VERS-TLS1.0"),
    "wget": ("wget", "wget --version | cut -d' ' -f1-3", "wget -4 -q -t 1 -T 3 --no-check-certificate "
             "-O /dev/null https://localhost:{port}/", "wget https://localhost (SNI localhost)"),
    "node": ("node", "echo node $(node --version)", "node -e \"{node}\" {port} " + SNI,
             "node tls.connect, servername, no ALPN"),
    "nghttp": ("nghttp", "nghttp --version", "nghttp -n -t 3 https://localhost:{port}/",
               "nghttp -n (nghttp2's client, ALPN h2)"),
    "h2load": ("h2load", "h2load --version", "h2load -n 1 -c 1 https://localhost:{port}/",
               "h2load -n 1 -c 1"),
    "wrk": ("wrk", "wrk -v 2>&1 | cut -d' ' -f1,2", "wrk -t1 -c1 -d1s https://localhost:{port}/", "wrk -t1 -c1"),
}


# Scanners open many connections; these keep the first hello that `pick` accepts.
# name: (binary, version command, scan command, pick, note)
SCANNERS = {
    "testssl-sslv3": ("testssl", "echo testssl.sh $(dpkg-query -W -f '${Version}' testssl.sh)",
                      "testssl --quiet --color 0 -p --warnings off 127.0.0.1:{port}",
                      lambda h: h[0] == 0x16 and h[9:11] == b"\x03\x00",
                      "testssl -p: its crafted SSLv3 hello (legacy_version 0x0300)"),
    "testssl-sslv2": ("testssl", "echo testssl.sh $(dpkg-query -W -f '${Version}' testssl.sh)",
                      "testssl --quiet --color 0 -p --warnings off 127.0.0.1:{port}",
                      lambda h: h[0] & 0x80 != 0,
                      "testssl -p: its crafted SSLv2-format hello"),
}


def capture(names):
    """Runs each client against a listener; stores its first hello. Returns name -> info."""
    out = {}
    for name in names:
        if name in SCANNERS:
            binary, vcmd, cmd, pick, note = SCANNERS[name]
        else:
            binary, vcmd, cmd, note = CLIENTS[name]
            pick = lambda hello: True  # noqa: E731
        if not shutil.which(binary):
            print(f"skip {name}: {binary} not installed", file=sys.stderr)
            continue
        lst = Listener(pick)
        tmp = tempfile.mkdtemp(prefix="capture-")
        full = cmd.format(port=lst.port, tmp=tmp, py=PY_CLIENT.replace("'", '"'),
                          node=NODE_CLIENT.replace('"', '\\"'))
        proc = subprocess.Popen(full, shell=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        ok = lst.got.wait(60)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this script started, by its id
        except ProcessLookupError:
            pass
        proc.wait()
        lst.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if not ok:
            print(f"skip {name}: no hello within 60 s", file=sys.stderr)
            continue
        HELLOS.mkdir(exist_ok=True)
        (HELLOS / f"{name}.bin").write_bytes(lst.hello)
        out[name] = {"client": version_of(vcmd), "how": note}
        print(f"captured {name}: {len(lst.hello)} bytes", file=sys.stderr)
    return out


def replay(files):
    """Sends each file's bytes over loopback under tcpdump. Returns (pcap path, port -> file)."""
    pcap = Path(tempfile.mkdtemp(prefix="ja4-")) / "replay.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(pcap),
                             "tcp and host 127.0.0.1"], stderr=subprocess.PIPE)
    time.sleep(1.5)
    ports = {}
    for f in files:
        lst = Listener()
        s = socket.create_connection(("127.0.0.1", lst.port))
        s.sendall(f.read_bytes())
        if not lst.got.wait(5):
            raise SystemExit(f"{f}: the listener did not read a whole hello")
        s.close()
        lst.close()
        ports[lst.port] = f
    time.sleep(1.0)
    dump.send_signal(signal.SIGINT)
    dump.wait()
    return pcap, ports


def ja4plus_of(pcap):
    """dport -> (ja4, ja4_r) from the reference implementation."""
    from scapy.all import rdpcap
    from ja4plus import JA4Fingerprinter

    fp = JA4Fingerprinter()
    for pkt in rdpcap(str(pcap)):
        fp.process_packet(pkt)
    return {e["dstport"]: (e["fingerprint"], e["raw"]) for e in fp.fingerprints}


def is_grease(v):
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


def tshark_of(pcap):
    """dport -> ja4, built from tshark's dissection (TLS-format hellos only)."""
    fields = ["tcp.dstport", "tls.handshake.version", "tls.handshake.extensions.supported_version",
              "tls.handshake.ciphersuite", "tls.handshake.extension.type",
              "tls.handshake.sig_hash_alg", "tls.handshake.extensions_alpn_str"]
    cmd = ["tshark", "-r", str(pcap), "-Y", "tls.handshake.type == 1", "-T", "fields",
           "-E", "separator=\t", "-E", "aggregator=,", "-E", "occurrence=a"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        cols = (line.split("\t") + [""] * len(fields))[: len(fields)]
        ints = [[int(x, 0) for x in c.split(",") if x] for c in cols[:6]]
        dport, legacy, supported, ciphers, exts, sigs = ints
        alpn = cols[6].split(",")[0] if cols[6] else ""
        ciphers = [c for c in ciphers if not is_grease(c)]
        exts = [e for e in exts if not is_grease(e)]
        sigs = [s for s in sigs if not is_grease(s)]
        supported = [v for v in supported if not is_grease(v)]
        v = max(supported) if supported else legacy[0]
        ver = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
               0x0002: "s2"}.get(v, "00")
        a = alpn.encode("latin-1") if alpn else b""
        if not a:
            al = "00"
        elif chr(a[0]).isalnum() and chr(a[-1]).isalnum() and a[0] < 128 and a[-1] < 128:
            al = chr(a[0]) + chr(a[-1])
        else:
            al = f"{a[0]:02x}"[0] + f"{a[-1]:02x}"[1]

        def h(s):
            return hashlib.sha256(s.encode()).hexdigest()[:12] if s else "000000000000"

        srt = sorted(e for e in exts if e not in (0x0000, 0x0010))
        c = ",".join(f"{e:04x}" for e in srt)
        if sigs:
            c += "_" + ",".join(f"{s:04x}" for s in sigs)
        ja4 = (f"t{ver}{'d' if 0 in exts else 'i'}{min(len(ciphers), 99):02d}"
               f"{min(len(exts), 99):02d}{al}_{h(','.join(f'{x:04x}' for x in sorted(ciphers)))}"
               f"_{h(c) if srt else '000000000000'}")
        res[dport[0]] = ja4
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="reuse hellos/*.bin and their entries")
    ap.add_argument("clients", nargs="*", help=f"some of: {' '.join([*CLIENTS, *SCANNERS])}")
    args = ap.parse_args()
    manifest_path = HERE / "manifest.json"
    old = {}
    if manifest_path.exists():
        old = {e["name"]: e for e in json.loads(manifest_path.read_text())["entries"]}
    info = {n: {"client": e["client"], "how": e["how"]} for n, e in old.items()
            if e["source"] == "captured"}
    if not args.keep:
        info.update(capture(args.clients or [*CLIENTS, *SCANNERS]))

    entries = []
    for name in sorted(info):
        entries.append({"name": name, "source": "captured", "file": f"hellos/{name}.bin", **info[name]})
    common = json.loads((COMMON / "manifest.json").read_text())
    for name in sorted(common):
        entries.append({"name": f"common/{name}", "source": "outpost-common",
                        "file": f"../../../ebpf/outpost-common/testdata/clienthello/{name}.bin",
                        "client": "as its name says (same machine image)",
                        "how": "ebpf/outpost-common/testdata/clienthello (captured earlier)"})

    files = [HERE / e["file"] for e in entries]
    pcap, ports = replay(files)
    ref = ja4plus_of(pcap)
    second = tshark_of(pcap)
    by_file = {f: p for p, f in ports.items()}
    ja4plus_version = version_of(f"{sys.executable} -m pip show ja4plus | sed -n 2p")
    tshark_version = version_of("tshark --version")
    for e, f in zip(entries, files):
        port = by_file[f]
        first = f.read_bytes()[0]
        if port not in ref and first & 0x80:
            # An SSLv2-format hello: no reference computes a JA4 from one (the spec names
            # "s2" for version 0x0002 but no implementation parses the old record format).
            e["ja4"], e["ja4_r"] = None, None
        elif port not in ref:
            raise SystemExit(f"{e['name']}: ja4plus found no ClientHello in the replay")
        else:
            e["ja4"], e["ja4_r"] = ref[port]
        if port in second and second[port] != e["ja4"]:
            raise SystemExit(f"{e['name']}: ja4plus {e['ja4']} but tshark's fields {second[port]}")
        e["bytes"] = f.stat().st_size
        e["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        e["reference"] = (f"ja4plus {ja4plus_version.split()[-1]} over a tcpdump pcap of these "
                          f"bytes; cross-checked: {'yes' if port in second else 'no'} "
                          f"({tshark_version.split(' (')[0]} fields)")
    manifest_path.write_text(json.dumps({"entries": entries}, indent=1) + "\n")
    shutil.rmtree(pcap.parent, ignore_errors=True)
    for e in entries:
        print(f"{e['name']:28} {e['ja4'] or '(none: SSLv2 format)'}")


if __name__ == "__main__":
    main()
