//! `outpost-load`: the load generator, the origin server, and the comparison scenarios that run
//! them against outpost and nginx (`cargo xtask bench proxy|handshake|flood|memory|all`).
//!
//! # Layout
//! - [`gen`]: the generator (open and closed loop, keep-alive or a connection per request, full
//!   TLS 1.3 handshakes, legacy-hello flood, idle connections), one run per process.
//! - [`client`]: one operation on the wire: connect, TLS, GET and response, raw legacy hello.
//! - [`origin`]: the small HTTP/1.1 origin every system proxies to.
//! - [`systems`]: starting the systems under test (origin, nginx, outpost) and the certificate.
//! - [`netns`]: the client/edge namespaces on a veth wire, XDP attached through outpost's CLI.
//! - [`scenarios`]: proxy, handshake, flood, memory, websocket, h2; each compares systems in
//!   one run.
//! - [`wrk`]: wrk as the proxy scenario's second client, its summary read through a Lua hook.
//! - [`h2load`]: nghttp2's h2load as the h2 scenario's client, latency from its per-request log.
//! - [`ws`]: the WebSocket framing of the websocket scenario (client and the origin's echo).
//! - [`cpus`]: the proxy scenario's CPU split (`taskset`): the edge's CPUs, the client's.
//! - [`profile`]: the edge's flame graph (perf, inferno) at maximum load.
//! - [`report`]: the table on stdout, the JSON file and the SVG plot.
//! - [`procs`]: child process guards and what /proc says about CPU, memory and sockets.

mod client;
mod cpus;
mod gen;
mod h2load;
mod netns;
mod origin;
mod procs;
mod profile;
mod report;
mod scenarios;
mod systems;
mod wrk;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "outpost-load", about = "Load generator, origin and comparison scenarios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One generator run; progress on stderr, the result as JSON on stdout.
    Gen(gen::GenArgs),
    /// The origin server (HTTP/1.1, keep-alive, a fixed small body).
    Origin(origin::OriginArgs),
    /// Run scenarios and write the report under the results directory.
    Bench(scenarios::BenchArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Gen(args) => gen::main(args),
        Command::Origin(args) => origin::main(args),
        Command::Bench(args) => scenarios::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
