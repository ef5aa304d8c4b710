//! The classifier against real captures: it must agree with `manifest.json`'s `max_offered`,
//! whole and fed in every possible split.

use outpost_common::hello::{HelloParser, Progress};
use outpost_common::Version;

fn captures() -> Vec<(String, Vec<u8>, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/clienthello");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/manifest.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for (name, entry) in manifest.as_object().unwrap() {
        let bytes = std::fs::read(format!("{dir}/{name}.bin")).unwrap();
        assert_eq!(bytes.len() as u64, entry["bytes"].as_u64().unwrap(), "{name}: size");
        out.push((name.clone(), bytes, entry["max_offered"].as_str().unwrap().to_owned()));
    }
    assert!(out.len() >= 8, "expected the whole capture set, found {}", out.len());
    out
}

#[test]
fn every_capture_matches_manifest() {
    for (name, bytes, want) in captures() {
        match outpost_common::hello::classify(&bytes) {
            Progress::Decided(v) => assert_eq!(v.name(), want, "{name}"),
            other => panic!("{name}: {other:?}, want {want}"),
        }
    }
}

#[test]
fn every_split_of_every_capture_decides_the_same() {
    for (name, bytes, want) in captures() {
        for cut in 0..=bytes.len() {
            let mut p = HelloParser::new();
            let first = p.feed(&bytes[..cut]);
            let got = match first {
                Progress::NeedMore => p.feed(&bytes[cut..]),
                decided => decided,
            };
            match got {
                Progress::Decided(v) => assert_eq!(v.name(), want, "{name} split at {cut}"),
                other => panic!("{name} split at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn byte_at_a_time() {
    for (name, bytes, want) in captures() {
        let mut p = HelloParser::new();
        let mut result = Progress::NeedMore;
        for b in &bytes {
            result = p.feed(core::slice::from_ref(b));
            if result != Progress::NeedMore {
                break;
            }
        }
        assert_eq!(result, Progress::Decided(name_to_version(&want)), "{name}");
    }
}

fn name_to_version(n: &str) -> Version {
    Version::ALL.into_iter().find(|v| v.name() == n).unwrap()
}
