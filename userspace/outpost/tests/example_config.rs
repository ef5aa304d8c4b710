//! `outpost.example.toml` is the documented configuration: it must parse, and every value in it
//! must be the default, so the file never drifts from what `outpost run` does without one.

use outpost_proxy::config::Config;

#[test]
fn example_config_is_the_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/outpost.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let parsed = Config::parse(&text).unwrap_or_else(|e| panic!("{path}: {e:#}"));
    assert_eq!(format!("{parsed:#?}"), format!("{:#?}", Config::default()));
}

#[test]
fn example_config_names_every_section() {
    let text = include_str!("../outpost.example.toml");
    for section in ["[floor]", "[tls]", "[http]", "[[routes]]", "[routes.origin]", "health_check]"]
    {
        assert!(text.contains(section), "no {section} in outpost.example.toml");
    }
}
