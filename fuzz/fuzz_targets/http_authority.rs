//! The request the edge decides on, from arbitrary bytes: a head that parses and normalises
//! (`http::normalise`: authority, path, fields) is written upstream the way the proxy writes
//! it, and that head parses and normalises to the same authority, target and fields, and is
//! routed to the same route. Normalising twice changes nothing; the authority is always a
//! valid lowercase host; nothing panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outpost_proxy::{
    config::Config,
    http::{normalise, parse_request, remove_hop_by_hop, write_request_head, Limits, Request, Rules},
    router::Router,
    Registry,
};

/// Routes whose choice depends on the host and the path, as a protected app's would.
const ROUTES: &str = r#"
[[routes]]
host = "app.example.test"
path = "/"
[[routes]]
host = "app.example.test"
path = "/admin"
[[routes]]
host = "*.example.test"
path = "/"
[[routes]]
host = "*"
path = "/public"
"#;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let config = Config::parse(ROUTES).expect("the routes parse");
        let env = outpost_api::BuildEnv {
            node: "fuzz".into(),
            audit: outpost_api::Audit::new("fuzz", None),
            builtin: Some("127.0.0.1:9".parse().unwrap()),
            data_dir: ".".into(),
        };
        let registry = Registry::new().route(outpost_origin::OriginFactory::default());
        Router::build(&config, &registry, &env).expect("the router builds").0
    })
}

fn route_of(r: &Request<'_>) -> Option<String> {
    router().route(Some(&r.authority.host), r.path()).map(|r| r.describe())
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the connection's facts, so the fuzzer moves them too.
    let (facts, head) = match data {
        [f, rest @ ..] => (*f, rest),
        [] => return,
    };
    let asserted = ["Outpost-Access-Authenticated-User-Email".to_owned()];
    let rules = Rules {
        sni: (facts & 1 == 1).then_some("App.Example.Test."),
        underscores_in_headers: facts & 2 == 2,
        asserted: &asserted,
        trusted_proxy: facts & 4 == 4,
    };
    let Ok(Some((mut req, _))) = parse_request(head, &Limits::default()) else { return };
    if normalise(&mut req, &rules).is_err() {
        return;
    }
    let host = req.authority.host.as_str();
    assert!(!host.is_empty() && !host.ends_with('.'), "authority {host:?}");
    assert!(!host.bytes().any(|b| b.is_ascii_uppercase()), "authority {host:?}");
    assert!(req.target.starts_with('/') || req.target == "*", "target {:?}", req.target);

    let mut again = req.clone();
    assert_eq!(normalise(&mut again, &rules).map(|_| ()), Ok(()), "normalising twice");
    assert_eq!((&again.authority, &again.target), (&req.authority, &req.target));
    assert_eq!(again.headers, req.headers, "normalising twice changed the fields");

    // What the proxy sends upstream: the normalised head without hop-by-hop fields.
    let mut up = req.clone();
    remove_hop_by_hop(&mut up.headers);
    let mut wire = Vec::new();
    write_request_head(&up.method, &up.target, &up.headers, &mut wire);
    let unbounded =
        Limits { max_head_bytes: usize::MAX, max_headers: usize::MAX, max_body_bytes: u64::MAX };
    let (mut origin_view, n) = match parse_request(&wire, &unbounded) {
        Ok(Some(r)) => r,
        other => panic!("upstream head {:?} does not parse: {other:?}", wire.escape_ascii()),
    };
    assert_eq!(n, wire.len());
    // The origin sees the request as a client the edge trusts: no SNI, its own fields kept.
    let origin_rules = Rules { sni: None, underscores_in_headers: true, asserted: &[], trusted_proxy: true };
    assert_eq!(normalise(&mut origin_view, &origin_rules).map(|_| ()), Ok(()), "{:?}", wire.escape_ascii());
    assert_eq!(origin_view.authority, up.authority, "{:?}", wire.escape_ascii());
    assert_eq!(origin_view.target, up.target);
    assert_eq!(origin_view.headers, up.headers);
    assert_eq!(route_of(&origin_view), route_of(&req), "{:?}", wire.escape_ascii());
});
