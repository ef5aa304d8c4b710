//! h2: HTTP/2 over TLS through each edge, h2load as the client (`-c64 -m10`: 64 connections of
//! 10 concurrent streams each), closed loop, against the same origin (HTTP/1.1 behind each
//! edge). The systems take turns in rounds as in `websocket`; CPUs split as in `proxy`.
//!
//! An edge that does not negotiate h2 (`curl --http2` gets HTTP/1.1 from it) has no row: the
//! table says so. That is this build's outpost until its HTTP/2 lands, so it is reported but
//! does not fail the CI run; any other failure does.

use super::*;
use crate::h2load::{self, H2loadRun};

const EDGES: [&str; 2] = ["nginx", "outpost uring"];
/// Target reported (never asserted): outpost uring's req/s ≥ this × nginx's, at ≤ its p99.
const TARGET: f64 = 1.3;

pub(super) fn h2(ctx: &Ctx) -> Result<ScenarioReport> {
    let z = ctx.sizes;
    h2load::available()?;
    let split = Split::plan();
    eprintln!("outpost-load: {}", split.describe());
    let mut origin =
        systems::start_origin(&ctx.exe, &Place::Host, &split.client, "127.0.0.1:0", &ctx.work)?;
    let mut systems = start_proxies_h(ctx, &origin, &EDGES, &split.edge, true);
    // Every edge must speak h2: one that does not is not available (which fails the CI smoke
    // run), with what curl got.
    for s in &mut systems {
        let Ok(r) = &s.running else { continue };
        match http_version(r.port) {
            Ok(v) if v == "2" => {}
            Ok(v) => {
                s.running = Err(format!("no h2: curl --http2 negotiated HTTP/{v}"));
            }
            Err(e) => s.running = Err(format!("curl --http2: {e:#}")),
        }
    }
    let threads = split.client.threads_or(2);
    // Each measured run is preceded by a warm-up run of its own, outside the window in which
    // the edge's CPU is read: with h2load's `--warm-up-time` that CPU would cover requests the
    // run does not count.
    let run = |s: &Sys, target: SocketAddr, round: usize, warm: bool| {
        let what = if warm { "warm-up" } else { "round" };
        let label = format!("h2 {} {what} {round}", s.name);
        let stem = format!("{:03}-{}", ctx.seq.fetch_add(1, Ordering::Relaxed), sanitize(&label));
        H2loadRun {
            label,
            port: target.port(),
            connections: z.h2_conns,
            streams: z.h2_streams,
            threads,
            seconds: if warm { z.warmup } else { z.h2_run },
            pin: &split.client,
        }
        .run(&ctx.work, &ctx.runs, &stem)
    };
    let rounds = Rounds::run_warm(
        z.proxy_rounds,
        &systems,
        &origin,
        |s, target, round| run(s, target, round, true).map(drop),
        |s, target, round| run(s, target, round, false),
    )?;
    origin.check_alive()?;

    let mut t = Table::new(
        format!(
            "h2: HTTP/2 GET over TLS (h2load -c{} -m{}), closed loop, {} s per run after a {} s \
             warm-up run, median of {} interleaved rounds",
            z.h2_conns, z.h2_streams, z.h2_run, z.warmup, z.proxy_rounds
        ),
        &[
            "system",
            "req/s",
            "min-max req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "edge µs/req",
            "client CPU s",
            "others CPU s",
        ],
    );
    let mut panel =
        Panel { title: "h2: h2load, closed loop (median round)".into(), series: vec![] };
    for (i, s) in systems.iter().enumerate() {
        match rounds.row(i, true) {
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
    let (a, b) =
        (rounds.median_rps(&systems, "outpost uring"), rounds.median_rps(&systems, "nginx"));
    let (pa, pb) =
        (rounds.median_p99(&systems, "outpost uring"), rounds.median_p99(&systems, "nginx"));
    let verdict = match (target_verdict(a, b, TARGET), pa.zip(pb)) {
        ("met", Some((pa, pb))) if pa > pb => "not met (p99 above nginx's)",
        (v, _) => v,
    };
    t.notes.push(format!(
        "outpost uring / nginx: {} req/s, p99 {} (target ≥ {TARGET}x req/s at ≤ nginx's p99: \
         {verdict})",
        ratio(a, b),
        ratio(pa, pb)
    ));
    t.notes.extend(rounds.notes(&systems, &split));
    t.notes.push(
        "client: Debian's h2load (nghttp2, OpenSSL), one thread per client CPU; latency from its \
         per-request log (request start to the end of its response)."
            .into(),
    );
    let unavailable: serde_json::Map<String, Value> = systems
        .iter()
        .filter_map(|s| {
            let why = s.running.as_ref().err()?;
            Some((s.name.clone(), json!(format!("not available: {why}"))))
        })
        .collect();
    let json = json!({
        "cpu_split": split.json(),
        "connections": z.h2_conns,
        "streams": z.h2_streams,
        "rounds": rounds.json(&systems),
        "target": {"outpost uring / nginx": {"req_s": a.zip(b).map(|(a, b)| a / b),
            "p99": pa.zip(pb).map(|(a, b)| a / b), "target": TARGET, "verdict": verdict}},
        "unavailable": unavailable,
    });
    Ok(ScenarioReport { name: "h2".into(), tables: vec![t], json, panels: vec![panel] })
}

/// What `curl --http2` negotiates with the edge on `port`: "2", "1.1".
fn http_version(port: u16) -> Result<String> {
    let url = format!("https://localhost:{port}/");
    let out = procs::run(
        &[
            "curl",
            "--http2",
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &url,
        ],
        Duration::from_secs(10),
    )?;
    Ok(out.trim().to_owned())
}
