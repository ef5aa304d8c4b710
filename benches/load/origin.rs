//! The origin every system proxies to: `outpost-load origin`. HTTP/1.1 with keep-alive and
//! pipelining, a fixed small body for every request, and a WebSocket echo for a request that
//! asks to upgrade (see [`crate::ws`]); nothing else, so that it is never what limits a proxy.
//! It exits by itself after `--max-seconds` in case nobody stops it.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

#[derive(clap::Args, Clone, Debug)]
pub struct OriginArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Bytes of body in every response.
    #[arg(long, default_value_t = 128)]
    pub body: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 3600)]
    pub max_seconds: u64,
}

/// Header and body fields tolerated per request; more is a 431-class request we just close on.
const MAX_HEADERS: usize = 64;
/// A request head longer than this closes the connection.
const MAX_HEAD: usize = 64 * 1024;

pub fn main(args: OriginArgs) -> Result<()> {
    crate::procs::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(args.listen),
            socket2::Type::STREAM,
            None,
        )?;
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&args.listen.into()).with_context(|| format!("binding {}", args.listen))?;
        sock.listen(4096)?;
        let listener = TcpListener::from_std(sock.into())?;
        let addr = listener.local_addr()?;
        let body = "x".repeat(args.body.saturating_sub(1)) + "\n";
        let response: &'static [u8] = format!(
            "HTTP/1.1 200 OK\r\nServer: outpost-origin\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .leak();
        println!("listening {addr}");
        let serve = async {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // EMFILE and friends: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                tokio::spawn(connection(stream, response));
            }
        };
        tokio::select! {
            () = serve => {}
            () = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {
                eprintln!("origin: --max-seconds reached, exiting");
            }
        }
        Ok(())
    })
}

async fn connection(mut stream: TcpStream, response: &'static [u8]) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Answer every whole request in the buffer (pipelining) with one write.
        let mut close = false;
        let mut used = 0;
        // A request asked for a WebSocket: the connection becomes an echo once the answers
        // before it (and the 101) are out.
        let mut websocket = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&buf[used..]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let mut body_len = 0usize;
            close = req.version == Some(0);
            let mut upgrade = false;
            let mut key = None;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("upgrade") {
                    upgrade = h.value.eq_ignore_ascii_case(b"websocket");
                } else if h.name.eq_ignore_ascii_case("sec-websocket-key") {
                    key = Some(h.value.to_vec());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    body_len =
                        std::str::from_utf8(h.value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                }
            }
            if buf.len() - used < n + body_len {
                break;
            }
            used += n + body_len;
            if let (true, Some(key)) = (upgrade, key) {
                out.extend_from_slice(&crate::ws::switching_protocols(&key));
                websocket = true;
                break;
            }
            out.extend_from_slice(response);
            if close {
                break;
            }
        }
        buf.drain(..used);
        if buf.len() > MAX_HEAD {
            return;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if websocket {
            crate::ws::echo_loop(&mut stream, buf).await;
            return;
        }
        if close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}
