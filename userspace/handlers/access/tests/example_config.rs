//! The `[access]` block of `outpost.example.toml` (commented out: Access is off by default)
//! parses once uncommented, and every key it shows that has a default shows that default.

use outpost_access::config::{AccessConfig, AppConfig};

#[test]
fn example_access_block_shows_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../outpost/outpost.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("\n# [access]\n").expect("an [access] block in outpost.example.toml");
    let block: String = text[start + 1..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let doc: toml::Value = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    let c = AccessConfig::from_section(&doc["access"]).unwrap();
    let d = AccessConfig::default();
    assert_eq!(
        AccessConfig {
            auth_host: d.auth_host.clone(),
            providers: vec![],
            apps: vec![],
            ..c.clone()
        },
        d,
        "the example's [access] keys are not the defaults"
    );
    assert_eq!(c.providers.len(), 1);
    assert_eq!(c.providers[0].scopes, ["openid", "email", "profile"]);
    assert_eq!(c.apps.len(), 1);
    let a: &AppConfig = &c.apps[0];
    assert_eq!(
        (a.path.as_str(), a.allow_any_authenticated, a.providers.is_empty()),
        ("/", false, true)
    );
}
