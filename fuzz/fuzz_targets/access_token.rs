//! Access's reading of what a client sends it: the `Cookie` header and the app token (JWT) in
//! it, and return paths. Nothing panics; a token that verifies was signed by the edge key for
//! this host and issuer; claims built from the bytes survive sign-then-verify unchanged;
//! removing a cookie leaves no pair of that name; an accepted return path is a path on this
//! host.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use outpost_access::{
    cookies,
    keys::EdgeKey,
    policy::check_return_path,
    token::{self, Checked, Claims},
};

const ISS: &str = "auth.example.test";
const AUD: &str = "wiki.example.test";

fn key() -> &'static EdgeKey {
    static KEY: OnceLock<EdgeKey> = OnceLock::new();
    KEY.get_or_init(|| EdgeKey::generate().expect("a P-256 key"))
}

fuzz_target!(|data: &[u8]| {
    let k = key();
    // The whole input as one Cookie header, and cut in two headers at a point the bytes choose.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let headers: [&[u8]; 2] = [&data[..cut], &data[cut..]];
    let found = cookies::find(headers.iter().copied(), cookies::TOKEN);
    let _ = cookies::find([data], cookies::SESSION);
    let logins = cookies::with_prefix(headers.iter().copied(), cookies::LOGIN_PREFIX);
    assert!(logins.iter().all(|(n, _)| n.starts_with(cookies::LOGIN_PREFIX)));
    if let Some(kept) = cookies::without(&headers, cookies::TOKEN) {
        let kept = String::from_utf8(kept).expect("only UTF-8 pairs are kept");
        assert!(
            kept.split(';').all(|p| p.split_once('=').map_or(p, |(n, _)| n).trim() != cookies::TOKEN),
            "{kept:?}"
        );
    }

    // Every candidate token: the cookie's value and the raw input.
    let text = String::from_utf8_lossy(data);
    for t in found.iter().map(String::as_str).chain(std::iter::once(text.as_ref())) {
        let _ = token::key_id(t);
        match token::check(t, &k.decoding_key(), ISS, AUD) {
            Checked::Valid(c) | Checked::Expired(c) => {
                assert_eq!((c.iss.as_str(), c.aud.as_str()), (ISS, AUD));
                // Only the edge key can have signed it: the fuzzer cannot forge one, so a
                // valid token must be one the edge could have made.
                assert_eq!(token::key_id(t).as_deref(), Ok(k.kid.as_str()), "{t}");
            }
            Checked::Refused(_) => {}
        }
        if check_return_path(t).is_ok() {
            assert!(t.starts_with('/') && !t.starts_with("//") && !t.contains('\\'), "{t:?}");
        }
    }

    // Claims made of the input survive signing and verification unchanged. Signing costs
    // milliseconds under the sanitizer: only inputs that start with `R` take this path, so the
    // parsers above keep most of the time.
    if data.first() != Some(&b'R') {
        return;
    }
    let mut parts = text.splitn(3, '\u{0}');
    let (sub, email, sid) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let claims = Claims::new(ISS, AUD, sub, email, sid, std::time::Duration::from_secs(900));
    let signed = k.sign(&claims).expect("signing never fails on valid claims");
    assert_eq!(token::check(&signed, &k.decoding_key(), ISS, AUD), Checked::Valid(Arc::new(claims.clone())));
    let header = format!("a=b; {}={signed}; c", cookies::TOKEN);
    assert_eq!(cookies::find([header.as_bytes()], cookies::TOKEN).as_deref(), Some(signed.as_str()));
});
