//! `outpost.example.toml` is the documented configuration: it must parse, and every value in it
//! must be the default, so the file never drifts from what `outpost run` does without one. The
//! core's keys are compared with the core's defaults; each handler's table with that handler's
//! own defaults (the core passes those tables through unread).

use outpost_origin::OriginConfig;
use outpost_proxy::config::Config;
use outpost_store::StoreConfig;

#[test]
fn example_config_is_the_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/outpost.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut parsed = Config::parse(&text).unwrap_or_else(|e| panic!("{path}: {e:#}"));
    for route in &mut parsed.routes {
        assert_eq!(route.handler, "origin", "{path}: the example's routes use the origin handler");
        let origin = OriginConfig::from_settings(&route.handler_settings())
            .unwrap_or_else(|e| panic!("{path}: [routes.origin]: {e:#}"));
        assert_eq!(origin, OriginConfig::default(), "{path}: [routes.origin] is not the default");
        route.settings.clear();
    }
    let store: StoreConfig = parsed.sections.remove("store").expect("[store]").try_into().unwrap();
    assert_eq!(store, StoreConfig::default(), "{path}: [store] is not the default");
    // The binary's own sections: every key commented out, so every key at its default.
    for section in ["audit", "fleet", "clients"] {
        let table = parsed.sections.remove(section).unwrap_or_else(|| panic!("no [{section}]"));
        assert!(table.as_table().is_some_and(|t| t.is_empty()), "{path}: [{section}] sets a key");
    }
    assert_eq!(format!("{parsed:#?}"), format!("{:#?}", Config::default()));
}

#[test]
fn example_config_names_every_section() {
    let text = include_str!("../outpost.example.toml");
    for section in [
        "[floor]",
        "[tls]",
        "[http]",
        "[store]",
        "[audit]",
        "[fleet]",
        "[clients]",
        "[after_response]",
        "[[routes]]",
        "[routes.origin]",
        "health_check]",
    ] {
        assert!(text.contains(section), "no {section} in outpost.example.toml");
    }
}
