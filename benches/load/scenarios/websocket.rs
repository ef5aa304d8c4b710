//! websocket: a WebSocket echo through each edge, against the same echo reached directly.
//!
//! Each connection upgrades `/ws` once (before the clock), then sends a binary message of
//! [`MESSAGE_BYTES`] and waits for its echo, closed loop (`outpost-load gen --op ws`). The
//! systems take turns in rounds (each round starting one system later), so that other work on
//! the machine falls on all of them alike; each row is the median of its rounds. CPUs split as
//! in the proxy scenario: the edge alone on its CPUs, the generator and the origin on the rest.

use super::*;

/// Payload of each message: a small chat or game update.
const MESSAGE_BYTES: usize = 32;
/// The baseline: the origin's echo without an edge, plain TCP.
const DIRECT: &str = "direct to the origin (ws://)";
const EDGES: [&str; 3] = ["nginx", "outpost uring", "outpost epoll"];
/// Targets reported (never asserted): outpost uring's messages/s over each of these.
const TARGETS: [(&str, f64); 2] = [(DIRECT, 0.8), ("nginx", 1.0)];

pub(super) fn websocket(ctx: &Ctx) -> Result<ScenarioReport> {
    let z = ctx.sizes;
    let split = Split::plan();
    eprintln!("outpost-load: {}", split.describe());
    let mut origin =
        systems::start_origin(&ctx.exe, &Place::Host, &split.client, "127.0.0.1:0", &ctx.work)?;
    let origin_addr = loopback(origin.port);
    let mut systems = start_proxies(ctx, &origin, &EDGES, &split.edge);
    systems.insert(0, Sys { name: DIRECT.into(), tls: false, running: Err(String::new()) });
    let mut base = GenArgs::new("websocket", origin_addr);
    base.op = Op::Ws;
    base.path = "/ws".into();
    base.message_bytes = MESSAGE_BYTES;
    base.connections = z.ws_conns;
    base.duration = z.ws_run;
    base.timeout = 5.0;
    base.threads = split.client.threads_or(base.threads);
    // The baseline must work; an edge that cannot upgrade becomes unavailable.
    ctx.warm_up(DIRECT, base.clone(), &Place::Host, &split.client)?;
    warm_all(ctx, &mut systems[1..], &base, &split.client);

    let rounds = Rounds::run(ctx, &systems, &origin, |s, target, round| {
        let mut args = base.clone();
        args.label = format!("websocket {} round {round}", s.name);
        args.target = target;
        args.tls = s.tls;
        ctx.gen_on(args, &Place::Host, &split.client)
    })?;
    origin.check_alive()?;

    let mut t = Table::new(
        format!(
            "websocket: {MESSAGE_BYTES}-byte binary message and its echo, closed loop, {} \
             connections (wss:// through an edge, TLS 1.3), {} s per run, median of {} \
             interleaved rounds",
            z.ws_conns, z.ws_run, z.rounds
        ),
        &[
            "system",
            "msg/s",
            "min-max msg/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "edge µs/msg",
            "client CPU s",
            "others CPU s",
        ],
    );
    let mut panel = Panel {
        title: format!("websocket: {MESSAGE_BYTES}-byte echo (closed loop, median round)"),
        series: vec![],
    };
    for (i, s) in systems.iter().enumerate() {
        match rounds.row(i, s.tls) {
            Err(why) => t.unavailable(&s.name, why),
            Ok(row) => {
                t.row(row.cells(&s.name));
                panel.series.push(series(
                    &s.name,
                    &row.median_run.run,
                    system_color(&s.name),
                    false,
                ));
            }
        }
    }
    let mut targets_json = serde_json::Map::new();
    for (other, target) in TARGETS {
        let (a, b) =
            (rounds.median_rps(&systems, "outpost uring"), rounds.median_rps(&systems, other));
        let verdict = target_verdict(a, b, target);
        t.notes.push(format!(
            "outpost uring / {other}: {} msg/s, p99 {} (target ≥ {target}x msg/s: {verdict})",
            ratio(a, b),
            ratio(rounds.median_p99(&systems, "outpost uring"), rounds.median_p99(&systems, other)),
        ));
        targets_json.insert(
            format!("outpost uring / {other}"),
            json!({"msg_s": a.zip(b).map(|(a, b)| a / b), "target": target, "verdict": verdict}),
        );
    }
    for (a, b) in [("outpost epoll", DIRECT), ("outpost epoll", "nginx"), ("nginx", DIRECT)] {
        t.notes.push(format!(
            "{a} / {b}: {} msg/s, p99 {}",
            ratio(rounds.median_rps(&systems, a), rounds.median_rps(&systems, b)),
            ratio(rounds.median_p99(&systems, a), rounds.median_p99(&systems, b)),
        ));
    }
    t.notes.extend(rounds.notes(&systems, &split));
    t.notes.push(
        "client: outpost-load gen --op ws (hand-rolled RFC 6455 framing, benches/load/ws.rs); \
         latency from the message's write to its whole echo; the direct row's CPU is the origin's."
            .into(),
    );
    let json = json!({
        "cpu_split": split.json(),
        "message_bytes": MESSAGE_BYTES,
        "rounds": rounds.json(&systems),
        "targets": targets_json,
        "unavailable": systems[1..]
            .iter()
            .filter_map(|s| {
                let why = s.running.as_ref().err()?;
                Some((s.name.clone(), json!(format!("not available: {why}"))))
            })
            .collect::<serde_json::Map<_, _>>(),
    });
    Ok(ScenarioReport { name: "websocket".into(), tables: vec![t], json, panels: vec![panel] })
}
