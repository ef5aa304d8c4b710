//! Building test frames: Ethernet (VLAN tags), IPv4 (options, fragments) or IPv6 (extension
//! headers), TCP (options) or UDP, with correct lengths and checksums.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const EDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// TCP timestamps option, padded to 12 bytes as Linux sends it.
pub const TS_OPTION: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

#[derive(Clone, Debug)]
pub enum Net {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        id: u16,
        options: Vec<u8>,
        frag: u16,
    },
    /// `ext`: (header type, body without the next-header and length bytes; padded to 8n-2).
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        ext: Vec<(u8, Vec<u8>)>,
    },
}

#[derive(Clone, Debug)]
pub enum Transport {
    Tcp { sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16, options: Vec<u8> },
    Udp { sport: u16, dport: u16 },
}

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// (TPID, VLAN id), outermost first.
    pub vlans: Vec<(u16, u16)>,
    /// EtherType when there is no IP header (e.g. ARP).
    pub ether_type: Option<u16>,
    pub net: Net,
    pub transport: Transport,
    pub payload: Vec<u8>,
    /// Bytes appended after the IP datagram (Ethernet padding).
    pub trailer: Vec<u8>,
    /// Cut the frame to this length after building (a truncated capture).
    pub truncate: Option<usize>,
}

impl Packet {
    /// A TCP segment from the client to the edge over IPv4, ACK|PSH, with timestamps.
    pub fn tcp4(sport: u16, dport: u16, payload: &[u8]) -> Packet {
        Packet {
            src_mac: CLIENT_MAC,
            dst_mac: EDGE_MAC,
            vlans: Vec::new(),
            ether_type: None,
            net: Net::V4 {
                src: CLIENT_V4,
                dst: EDGE_V4,
                ttl: 64,
                id: 0x1234,
                options: vec![],
                frag: 0x4000,
            },
            transport: Transport::Tcp {
                sport,
                dport,
                seq: 1000,
                ack: 5000,
                flags: ACK | PSH,
                window: 502,
                options: TS_OPTION.to_vec(),
            },
            payload: payload.to_vec(),
            trailer: Vec::new(),
            truncate: None,
        }
    }

    /// The same over IPv6.
    pub fn tcp6(sport: u16, dport: u16, payload: &[u8]) -> Packet {
        let mut p = Packet::tcp4(sport, dport, payload);
        p.net = Net::V6 { src: CLIENT_V6, dst: EDGE_V6, hop_limit: 64, ext: Vec::new() };
        p
    }

    /// From another client address (of the packet's family).
    pub fn from(mut self, addr: std::net::IpAddr) -> Packet {
        match (&mut self.net, addr) {
            (Net::V4 { src, .. }, std::net::IpAddr::V4(a)) => *src = a,
            (Net::V6 { src, .. }, std::net::IpAddr::V6(a)) => *src = a,
            _ => panic!("{addr} is not of the packet's address family"),
        }
        self
    }

    /// Client and server socket addresses of a TCP segment.
    pub fn sockets(&self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let (sport, dport) = match self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => (sport, dport),
        };
        let (src, dst): (std::net::IpAddr, std::net::IpAddr) = match self.net {
            Net::V4 { src, dst, .. } => (src.into(), dst.into()),
            Net::V6 { src, dst, .. } => (src.into(), dst.into()),
        };
        ((src, sport).into(), (dst, dport).into())
    }

    pub fn vlan(mut self, tpid: u16, id: u16) -> Packet {
        self.vlans.push((tpid, id));
        self
    }

    pub fn seq(mut self, value: u32) -> Packet {
        if let Transport::Tcp { seq, .. } = &mut self.transport {
            *seq = value;
        }
        self
    }

    pub fn flags(mut self, value: u8) -> Packet {
        if let Transport::Tcp { flags, .. } = &mut self.transport {
            *flags = value;
        }
        self
    }

    pub fn ipv4_options(mut self, opts: &[u8]) -> Packet {
        if let Net::V4 { options, .. } = &mut self.net {
            *options = opts.to_vec();
        }
        self
    }

    pub fn ipv4_frag(mut self, value: u16) -> Packet {
        if let Net::V4 { frag, .. } = &mut self.net {
            *frag = value;
        }
        self
    }

    pub fn ipv6_ext(mut self, kind: u8, body: &[u8]) -> Packet {
        if let Net::V6 { ext, .. } = &mut self.net {
            ext.push((kind, body.to_vec()));
        }
        self
    }

    pub fn udp(mut self) -> Packet {
        if let Transport::Tcp { sport, dport, .. } = self.transport {
            self.transport = Transport::Udp { sport, dport };
        }
        self
    }

    pub fn trailer(mut self, bytes: &[u8]) -> Packet {
        self.trailer = bytes.to_vec();
        self
    }

    pub fn truncate(mut self, len: usize) -> Packet {
        self.truncate = Some(len);
        self
    }

    pub fn tcp_seq(&self) -> u32 {
        match self.transport {
            Transport::Tcp { seq, .. } => seq,
            Transport::Udp { .. } => 0,
        }
    }

    /// What XDP turns this segment into for the server: RST|ACK, no payload, window 0.
    pub fn as_reset_to_server(&self) -> Packet {
        let mut p = self.clone();
        p.payload.clear();
        p.trailer.clear();
        if let Transport::Tcp { flags, window, .. } = &mut p.transport {
            *flags = RST | ACK;
            *window = 0;
        }
        p
    }

    /// What XDP sends back to the client for this segment: addresses and ports swapped,
    /// seq = its ack, ack = its seq + payload (+1 for FIN), RST|ACK, TTL 64.
    pub fn as_reset_to_client(&self) -> Packet {
        let mut p = self.clone();
        std::mem::swap(&mut p.src_mac, &mut p.dst_mac);
        match &mut p.net {
            Net::V4 { src, dst, ttl, .. } => {
                std::mem::swap(src, dst);
                *ttl = 64;
            }
            Net::V6 { src, dst, hop_limit, .. } => {
                std::mem::swap(src, dst);
                *hop_limit = 64;
            }
        }
        if let Transport::Tcp { sport, dport, seq, ack, flags, window, .. } = &mut p.transport {
            std::mem::swap(sport, dport);
            let fin = (*flags & FIN != 0) as u32;
            let new_ack = seq.wrapping_add(self.payload.len() as u32).wrapping_add(fin);
            *seq = *ack;
            *ack = new_ack;
            *flags = RST | ACK;
            *window = 0;
        }
        p.payload.clear();
        p.trailer.clear();
        p
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = self.transport_bytes();
        let mut out = Vec::new();
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        for (tpid, id) in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        if let Some(t) = self.ether_type {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&self.payload);
        } else {
            match &self.net {
                Net::V4 { src, dst, ttl, id, options, frag } => {
                    out.extend_from_slice(&0x0800u16.to_be_bytes());
                    assert!(options.len() % 4 == 0, "IPv4 options must be padded to 4 bytes");
                    let ihl = 20 + options.len();
                    let mut ip = Vec::with_capacity(ihl);
                    ip.push(0x40 | (ihl / 4) as u8);
                    ip.push(0);
                    ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                    ip.extend_from_slice(&id.to_be_bytes());
                    ip.extend_from_slice(&frag.to_be_bytes());
                    ip.push(*ttl);
                    ip.push(self.proto());
                    ip.extend_from_slice(&[0, 0]);
                    ip.extend_from_slice(&src.octets());
                    ip.extend_from_slice(&dst.octets());
                    ip.extend_from_slice(options);
                    let c = checksum(&ip, 0);
                    ip[10..12].copy_from_slice(&c.to_be_bytes());
                    out.extend_from_slice(&ip);
                    let mut l4 = l4;
                    let mut pseudo = Vec::new();
                    pseudo.extend_from_slice(&src.octets());
                    pseudo.extend_from_slice(&dst.octets());
                    pseudo.extend_from_slice(&[0, self.proto()]);
                    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                    self.fill_l4_checksum(&mut l4, &pseudo);
                    out.extend_from_slice(&l4);
                }
                Net::V6 { src, dst, hop_limit, ext } => {
                    out.extend_from_slice(&0x86ddu16.to_be_bytes());
                    let mut exts = Vec::new();
                    for (i, (_, body)) in ext.iter().enumerate() {
                        let next = ext.get(i + 1).map_or(self.proto(), |e| e.0);
                        assert!(
                            (body.len() + 2) % 8 == 0,
                            "extension header body must be 8n-2 bytes"
                        );
                        exts.push(next);
                        exts.push(((body.len() + 2) / 8 - 1) as u8);
                        exts.extend_from_slice(body);
                    }
                    let first = ext.first().map_or(self.proto(), |e| e.0);
                    out.extend_from_slice(&[0x60, 0, 0, 0]);
                    out.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
                    out.push(first);
                    out.push(*hop_limit);
                    out.extend_from_slice(&src.octets());
                    out.extend_from_slice(&dst.octets());
                    out.extend_from_slice(&exts);
                    let mut l4 = l4;
                    let mut pseudo = Vec::new();
                    pseudo.extend_from_slice(&src.octets());
                    pseudo.extend_from_slice(&dst.octets());
                    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                    pseudo.extend_from_slice(&[0, 0, 0, self.proto()]);
                    self.fill_l4_checksum(&mut l4, &pseudo);
                    out.extend_from_slice(&l4);
                }
            }
        }
        out.extend_from_slice(&self.trailer);
        if let Some(n) = self.truncate {
            out.truncate(n);
        }
        out
    }

    fn proto(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
        }
    }

    fn transport_bytes(&self) -> Vec<u8> {
        let mut t = Vec::new();
        match &self.transport {
            Transport::Tcp { sport, dport, seq, ack, flags, window, options } => {
                assert!(options.len() % 4 == 0, "TCP options must be padded to 4 bytes");
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                t.extend_from_slice(&ack.to_be_bytes());
                t.push((((20 + options.len()) / 4) as u8) << 4);
                t.push(*flags);
                t.extend_from_slice(&window.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(options);
            }
            Transport::Udp { sport, dport } => {
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
            }
        }
        t.extend_from_slice(&self.payload);
        t
    }

    fn fill_l4_checksum(&self, l4: &mut [u8], pseudo: &[u8]) {
        let at = match self.transport {
            Transport::Tcp { .. } => 16,
            Transport::Udp { .. } => 6,
        };
        let c = checksum(l4, sum(pseudo));
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

fn sum(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum()
}

/// Internet checksum of `bytes` plus an initial one's-complement sum.
pub fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut s = initial + sum(bytes);
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Hex dump, 16 bytes a line, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}", i * 16, h.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
