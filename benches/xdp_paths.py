#!/usr/bin/env python3
"""Counts the BPF instructions outpost_xdp executes on each of the xdp bench's packets, by running
the program as the kernel runs it (`bpftool prog dump xlated`: array lookups inlined, helpers
named) in a small emulator: packet, stack and map values as bytes; hash lookups find nothing
(empty tables, as in the bench); may_goto never expires. Observe mode, recording off, the bench's
setting. Prints the instructions executed per packet, per function, and the helper calls made.
A diagnostic for benches/README.md's floor analysis, not a test: it knows only the instructions
this program uses, and fails loudly on any other.

    # while `xdp-bench` runs (it loads the program and pins its maps under
    # /sys/fs/bpf/outpost-bench-PID): find the program that uses that run's parse_stats map
    MAP=$(bpftool map show pinned /sys/fs/bpf/outpost-bench-$PID/parse_stats | grep -o '^[0-9]*')
    ID=$(bpftool prog show | grep -B2 "map_ids.*\b$MAP\b" | grep -o '^[0-9]*')
    bpftool prog dump xlated id $ID > x.xlated
    for m in $(bpftool prog show id $ID | grep -o 'map_ids [0-9,]*' | cut -d' ' -f2 | tr , ' ')
    do bpftool map show id $m | head -1; done > x.xlated.maps
    # policy: floor TLS 1.2 (4), observe (0), configured, rates 200 and 5 (version.rs Policy)
    python3 benches/xdp_paths.py x.xlated 04000100c800000005000000
"""
import re, struct, sys
from collections import Counter
M64 = (1 << 64) - 1
OPC = {}

def parse(path):
    insns, fn_at, fn = {}, {}, None
    for line in open(path):
        if re.match(r'^(u32|void|u64|i32) ', line):
            fn = line.split('(')[0].split()[-1]; continue
        m = re.match(r'\s*(\d+): \((\w\w)\) (.*)', line)
        if m:
            i = int(m.group(1)); insns[i] = m.group(3).strip(); fn_at[i] = fn; OPC[i] = m.group(2)
    return insns, fn_at

def maps_of(path):
    names = {}
    for line in open(path + '.maps'):
        m = re.match(r'(\d+): (\w+)\s+name (\w+)', line)
        if m: names[int(m.group(1))] = (m.group(2), m.group(3))
    return names

class P:  # pointer: region (a bytearray key) + offset
    __slots__ = ('reg', 'off')
    def __init__(s, reg, off): s.reg, s.off = reg, off
    def __repr__(s): return f'<{s.reg}+{s.off}>'

class Emu:
    def __init__(s, insns, fn_at, names, pkt, ports=(443,), policy=None):
        s.insns, s.fn_at, s.names = insns, fn_at, names
        s.mem = {'pkt': bytearray(pkt)}
        s.ports = ports
        s.count = Counter(); s.helpers = Counter(); s.n = 0
        s.policy = policy
    def region(s, key, size=4096):
        if key not in s.mem:
            b = bytearray(size)
            if key == ('val', 'ports', 443 >> 6):
                w = 0
                for port in s.ports:
                    if port >> 6 == key[2]: w |= 1 << (port & 63)
                b[:8] = w.to_bytes(8, 'little')
            if key[0] == 'val' and key[1] == 'policy' and s.policy:
                b[:len(s.policy)] = s.policy
            s.mem[key] = b
        return s.mem[key]
    def load(s, p, size):
        if p.reg == 'ctx':
            return {0: P('pkt', 0), 8: P('pkt', len(s.mem['pkt']))}[p.off]
        if isinstance(p.reg, tuple) and p.reg[0] == 'map':
            t, name = s.names[p.reg[1]]
            if t == 'percpu_array':
                return P(('val', name, (p.off - 312) // 8), 0)
            p = s.array_value(name, p.off)
        b = s.region(p.reg)
        if p.reg == 'pkt': assert 0 <= p.off and p.off + size <= len(b), ('packet read out of range', p, size)
        v = int.from_bytes(b[p.off:p.off + size], 'little')
        if isinstance(p.reg, tuple) and p.reg[0] == 'stack' and (p.reg, p.off) in s.ptrs:
            return s.ptrs[(p.reg, p.off)]
        return v
    def array_value(s, name, off):
        # An array's inlined lookup points at 312 (the values) + index * element size.
        off -= 312
        if name in ('ports', 'flow_filter'): return P(('val', name, off // 8), off % 8)
        return P(('val', name, 0), off)
    def store(s, p, v, size):
        if isinstance(p.reg, tuple) and p.reg[0] == 'map':
            p = s.array_value(s.names[p.reg[1]][1], p.off)
        if isinstance(v, P):
            assert size == 8; s.ptrs[(p.reg, p.off)] = v; return
        s.ptrs.pop((p.reg, p.off), None)
        b = s.region(p.reg)
        b[p.off:p.off + size] = (v & ((1 << (8 * size)) - 1)).to_bytes(size, 'little')
    def run(s, trace=False):
        s.ptrs = {}
        r = [0] * 12
        depth = 0
        r[1] = P('ctx', 0); r[10] = P(('stack', depth), 512)
        frames = []
        pc = 0
        def val(tok):
            if tok[0] == 'r': return r[int(tok[1:])]
            if tok[0] == 'w': x = r[int(tok[1:])]; return x & 0xffffffff if isinstance(x, int) else x
            v = int(tok, 0)
            # Immediates are 32-bit, sign-extended, except in the 64-bit load (opcode 18).
            if OPC[pc] != '18' and 0x80000000 <= v <= 0xffffffff: v -= 1 << 32
            return v & M64
        def addr(base, off):
            b = val(base); assert isinstance(b, P), (base, b); return P(b.reg, b.off + int(off))
        while True:
            t = s.insns[pc]; s.n += 1; s.count[s.fn_at[pc]] += 1
            if trace: print(pc, t, r[:6], file=sys.stderr)
            nxt = pc + 1
            if nxt not in s.insns: nxt += 1
            if s.n > 200000: raise Exception('runaway')
            m = re.match(r'if (\S+) (\S+) (\S+) goto pc([+-]\d+)', t)
            if m:
                a, op, b, d = m.groups(); a = val(a); b = val(b)
                if isinstance(a, P) or isinstance(b, P):
                    if isinstance(b, int) and b == 0: a, b = 1, 0
                    elif isinstance(a, int) and a == 0: a, b = 0, 1
                    elif isinstance(a, P) and isinstance(b, P):
                        assert a.reg == b.reg, (pc, t, a, b); a, b = a.off & M64, b.off & M64
                    else:  # a pointer against a number: as the addresses they are
                        a = (0xffff888000001000 + a.off) & M64 if isinstance(a, P) else a
                        b = (0xffff888000001000 + b.off) & M64 if isinstance(b, P) else b
                sa = a - (1 << 64) if a >> 63 else a; sb = b - (1 << 64) if b >> 63 else b
                if m.group(1)[0] == 'w':
                    a &= 0xffffffff; b &= 0xffffffff
                    sa = a - (1 << 32) if a >> 31 else a; sb = b - (1 << 32) if b >> 31 else b
                res = {'==': a == b, '!=': a != b, '>': a > b, '>=': a >= b, '<': a < b, '<=': a <= b,
                       's>': sa > sb, 's>=': sa >= sb, 's<': sa < sb, 's<=': sa <= sb, '&': a & b != 0}[op]
                pc = pc + 1 + int(d) if res else nxt; continue
            m = re.match(r'goto pc([+-]\d+)', t)
            if m: pc = pc + 1 + int(m.group(1)); continue
            if t.startswith('gotol'): pc = pc + 1 + int(t.split('pc')[1]); continue
            if t == 'exit':
                if not frames: return r[0]
                pc, saved = frames.pop(); r[6:10] = saved; depth -= 1; r[10] = P(('stack', depth), 512); continue
            m = re.match(r'call pc([+-]\d+)', t)
            if m:
                frames.append((nxt, r[6:10])); depth += 1; r[10] = P(('stack', depth), 512)
                s.mem.pop(('stack', depth), None)
                pc = pc + 1 + int(m.group(1)); continue
            m = re.match(r'call (\w+)', t)
            if m:
                h = m.group(1); s.helpers[h] += 1
                if h == 'arch_bpf_timed_may_goto': r[11] = 65535
                elif h == '__htab_map_lookup_elem': r[0] = 0
                else: raise Exception(('helper', pc, h))
                for i in range(1, 6): r[i] = 0xdead
                pc = nxt; continue
            m = re.match(r'\*\((u\d+) \*\)\((r\d+) ([+-]\d+)\) = (\S+)', t)
            if m:
                s.store(addr(m.group(2), m.group(3)), val(m.group(4)), int(m.group(1)[1:]) // 8); pc = nxt; continue
            m = re.match(r'lock \*\((u\d+) \*\)\((r\d+) ([+-]\d+)\) \+= (\S+)', t)
            if m:
                p = addr(m.group(2), m.group(3)); sz = int(m.group(1)[1:]) // 8
                s.store(p, s.load(p, sz) + val(m.group(4)), sz); pc = nxt; continue
            m = re.match(r'([rw])(\d+) = \*\((u\d+) \*\)\((r\d+) ([+-]\d+)\)', t)
            if m:
                r[int(m.group(2))] = s.load(addr(m.group(4), m.group(5)), int(m.group(3)[1:]) // 8); pc = nxt; continue
            m = re.match(r'r(\d+) = map\[id:(\d+)\]\[0\]\+(\d+)', t)
            if m:
                _, name = s.names[int(m.group(2))]
                r[int(m.group(1))] = P(('val', name, 0), int(m.group(3))); pc = nxt; continue
            m = re.match(r'r(\d+) = map\[id:(\d+)\]', t)
            if m: r[int(m.group(1))] = P(('map', int(m.group(2))), 0); pc = nxt; continue
            m = re.match(r'r(\d+) = (be|le|bswap)(\d+) r\d+', t)
            if m:
                d = int(m.group(1)); bits = int(m.group(3)); v = r[d] & ((1 << bits) - 1)
                r[d] = int.from_bytes(v.to_bytes(bits // 8, 'little'), 'big') if m.group(2) != 'le' else v
                pc = nxt; continue
            m = re.match(r'([rw])(\d+) = \(([su])(\d+)\)([rw])(\d+)', t)  # movsx
            if m:
                v = r[int(m.group(6))] & ((1 << int(m.group(4))) - 1); bits = int(m.group(4))
                if v >> (bits - 1): v -= 1 << bits
                r[int(m.group(2))] = v & (M64 if m.group(1) == 'r' else 0xffffffff); pc = nxt; continue
            m = re.match(r'([rw])(\d+) (\S*=) (\S+)$', t)
            if m:
                w, d, op, src = m.groups(); d = int(d); sv = val(src); cur = r[d]
                if op == '=':
                    res = sv if isinstance(sv, P) or w == 'r' else sv & 0xffffffff
                elif isinstance(cur, P):
                    if isinstance(sv, int) and sv >> 63: sv -= 1 << 64
                    if op == '+=': res = P(cur.reg, cur.off + sv) if isinstance(sv, int) else None
                    elif op == '-=' and isinstance(sv, P): res = (cur.off - sv.off) & M64
                    elif op == '-=': res = P(cur.reg, cur.off - sv)
                    else: raise Exception((pc, t, cur))
                    if res is None: raise Exception((pc, t))
                elif isinstance(sv, P):
                    assert op == '+=', (pc, t); res = P(sv.reg, sv.off + (cur - (1 << 64) if cur >> 63 else cur))
                else:
                    mask = M64 if w == 'r' else 0xffffffff; bits = 64 if w == 'r' else 32
                    a = cur & mask; b = sv & mask if not (src.startswith('-')) else sv & mask
                    if op == '+=': res = a + b
                    elif op == '-=': res = a - b
                    elif op == '*=': res = a * b
                    elif op == '&=': res = a & b
                    elif op == '|=': res = a | b
                    elif op == '^=': res = a ^ b
                    elif op == '<<=': res = a << (b & (bits - 1))
                    elif op == '>>=': res = a >> (b & (bits - 1))
                    elif op == 's>>=': sa = a - (1 << bits) if a >> (bits - 1) else a; res = sa >> (b & (bits - 1))
                    elif op == '/=': res = a // b if b else 0
                    elif op == '%=': res = a % b if b else a
                    else: raise Exception((pc, t))
                    res &= mask
                r[d] = res; pc = nxt; continue
            m = re.match(r'([rw])(\d+) = -([rw])(\d+)', t)
            if m: r[int(m.group(2))] = (-r[int(m.group(4))]) & M64; pc = nxt; continue
            raise Exception(('unknown', pc, t))

def eth(ether=0x0800): return b'\x02' * 6 + b'\x04' * 6 + struct.pack('>H', ether)
def ipv4(proto, n):
    return struct.pack('>BBHHHBBH4s4s', 0x45, 0, 20 + n, 1, 0x4000, 64, proto, 0, bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
def ipv6(proto, n): return struct.pack('>IHBB16s16s', 6 << 28, n, proto, 64, bytes(15) + b'\x01', bytes(15) + b'\x02')
def tcp(sport, dport, flags=0x18, payload=b''):
    return struct.pack('>HHIIBBHHH', sport, dport, 1000, 1, 5 << 4, flags, 65535, 0, 0) + payload
def tcp4(sport, dport, payload, flags=0x18):
    t = tcp(sport, dport, flags, payload); return eth() + ipv4(6, len(t)) + t
def tcp6(sport, dport, payload, flags=0x18):
    t = tcp(sport, dport, flags, payload); return eth(0x86dd) + ipv6(6, len(t)) + t
def udp4(sport, dport, payload):
    u = struct.pack('>HHHH', sport, dport, 8 + len(payload), 0) + payload
    return eth() + ipv4(17, len(u)) + u
def capture(name):
    here = __import__('os').path.dirname(__import__('os').path.abspath(__file__))
    return open(f'{here}/../ebpf/outpost-common/testdata/clienthello/{name}.bin', 'rb').read()

if __name__ == '__main__':
    path = sys.argv[1]
    insns, fn_at = parse(path); names = maps_of(path)
    # Policy as the bench sets it (observe, floor TLS 1.2): read from the arg if given.
    policy = bytes.fromhex(sys.argv[2]) if len(sys.argv) > 2 and not sys.argv[2].startswith('-') else None
    rows = [
        ('UDP datagram (not TCP)', udp4(1, 53, bytes(64))),
        ('TCP to an unprotected port', tcp4(40000, 80, b'GET / HTTP/1.1\r\n\r\n')),
        ('pure ACK to 443', tcp4(40001, 443, b'', flags=0x10)),
        ('TLS application data to 443', tcp4(40002, 443, bytes([0x17, 3, 3, 0, 0x20, 0xab, 0xcd]))),
        ('(HTTP to 443: filter, no flow)', tcp4(40003, 443, b'GET / HTTP/1.1\r\n\r\n')),
    ]
    for i, name in enumerate(['openssl-tls1_0', 'openssl-tls1_1', 'openssl-tls1_2', 'openssl-tls1_3', 'openssl-default', 'curl-tls1_0', 'curl-default', 'python-tls1_0']):
        rows.append((f'hello {name}', tcp4(41000 + i, 443, capture(name))))
    rows.append(('hello openssl-tls1_3 over IPv6', tcp6(42000, 443, capture('openssl-tls1_3'))))
    for name, pkt in rows:
        e = Emu(insns, fn_at, names, pkt, policy=policy)
        try:
            ret = e.run(trace='-v' in sys.argv)
            per = ', '.join(f'{f} {n}' for f, n in e.count.items())
            hs = ', '.join(f'{h} x{n}' for h, n in e.helpers.items())
            print(f'{name:<34} {e.n:>5} insns  (action {ret}; {per}{"; " + hs if hs else ""})')
        except Exception as ex:
            print(f'{name:<34} failed after {e.n}: {ex}')
