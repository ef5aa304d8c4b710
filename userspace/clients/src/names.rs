//! Human names for JA4s of well-known clients.
//!
//! Every entry was captured on this project's machine image (Debian 12) by
//! `testdata/capture.py`, and its JA4 computed by the reference (ja4plus); a test checks that
//! each entry is in `testdata/manifest.json` and that every fingerprint there has a name. A
//! name says who sent such a hello here, not who sends it everywhere: the same TLS library
//! with the same settings gives the same JA4 whatever program links it (wrk and
//! `openssl s_client` share one, curl and `openssl s_client -alpn` nearly).

use crate::ja4::Ja4;

/// (JA4, name), grouped by the version offered (lookups scan: a few dozen entries).
const NAMES: &[(&str, &str)] = &[
    // Chromium 156.0.8078.114 headless (Debian), BoringSSL: GREASE and a shuffled extension
    // order on every connection, ECH GREASE, ML-KEM key share; JA4 sorts, so it is stable.
    ("t13d1517h2_8daaf6152771_cb7bf5808d99", "Chromium 156"),
    // openssl s_client -tls1_3 (OpenSSL 3.0.19), to an address (no SNI).
    ("t13i040900_16476d049b0b_78f1d400d464", "OpenSSL 3.0 s_client -tls1_3"),
    // curl 7.88.1 / OpenSSL 3.0.19 --tlsv1.3.
    ("t13d0412h2_16476d049b0b_85302d7e289e", "curl 7.88 --tlsv1.3"),
    // nghttp (nghttp2 1.52.0) / OpenSSL 3.0.19.
    ("t13d1213h2_ed40b14a4398_03aaa766dde5", "nghttp 1.52"),
    // h2load (nghttp2 1.52.0) / OpenSSL 3.0.19.
    ("t13d1313h2_df115388da38_03aaa766dde5", "h2load 1.52"),
    // Python 3.11.7 ssl.create_default_context() / OpenSSL 3.0.19.
    ("t13d181100_85036bcba153_d41ae481755e", "Python 3.11 ssl"),
    // gnutls-cli 3.7.9, defaults.
    ("t13d291300_723694b0fccc_2cc26d266019", "gnutls-cli 3.7"),
    // GNU Wget 1.21.3 / GnuTLS 3.7.9.
    ("t13d291300_723694b0fccc_899037bd0b8c", "Wget 1.21 (GnuTLS 3.7)"),
    // openssl s_client -servername -alpn h2,http/1.1 (OpenSSL 3.0.19).
    ("t13d3111h2_e8f1e7e78f70_1f22a2ca17c4", "OpenSSL 3.0 s_client -alpn"),
    // curl 7.88.1 / OpenSSL 3.0.19 --http1.1.
    ("t13d3112h1_e8f1e7e78f70_b26ce05bbdd6", "curl 7.88 --http1.1"),
    // curl 7.88.1 / OpenSSL 3.0.19, defaults.
    ("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", "curl 7.88"),
    // wrk 4.1.0 / OpenSSL 3.0.19; also openssl s_client -servername (3.0.19), no ALPN.
    ("t13d311000_e8f1e7e78f70_1f22a2ca17c4", "OpenSSL 3.0 client (wrk, s_client)"),
    // Node.js 20.20.2 tls.connect with servername, no ALPN.
    ("t13d591000_a33745022dd6_1f22a2ca17c4", "Node.js 20 tls"),
    // openssl s_client (OpenSSL 3.0.19), defaults, to an address (no SNI).
    ("t13i310900_e8f1e7e78f70_1f22a2ca17c4", "OpenSSL 3.0 s_client"),
    // curl 7.88.1 / OpenSSL 3.0.19 --tlsv1.0 --tls-max 1.0.
    ("t10d0906h2_c491f621fb4c_d4d584b446d3", "curl 7.88 --tls-max 1.0"),
    // curl 7.88.1 / OpenSSL 3.0.19 --tlsv1.0 --tls-max 1.0 to an address (no SNI).
    ("t10i0905h2_c491f621fb4c_d4d584b446d3", "curl 7.88 --tls-max 1.0"),
    // Python 3.11.7 ssl, minimum = maximum = TLSv1 / OpenSSL 3.0.19, with server_hostname.
    ("t10d090600_c491f621fb4c_195413a0cc0f", "Python 3.11 ssl TLSv1"),
    // openssl s_client -tls1 (3.0.19) to an address; also Python 3.11 ssl TLSv1 without
    // server_hostname.
    ("t10i090500_c491f621fb4c_195413a0cc0f", "OpenSSL 3.0 TLSv1 (s_client -tls1, Python)"),
    // gnutls-cli 3.7.9 --priority NORMAL:-VERS-ALL:+VERS-TLS1.0.
    ("t10d080900_051fb07a0855_f8a36b20a605", "gnutls-cli 3.7 TLS1.0"),
    // curl 7.88.1 / OpenSSL 3.0.19 --tlsv1.1 --tls-max 1.1.
    ("t11d0906h2_c491f621fb4c_d4d584b446d3", "curl 7.88 --tls-max 1.1"),
    // openssl s_client -tls1_1 (3.0.19), to an address.
    ("t11i090500_c491f621fb4c_195413a0cc0f", "OpenSSL 3.0 s_client -tls1_1"),
    // curl 7.88.1 / OpenSSL 3.0.19 --tlsv1.2 --tls-max 1.2.
    ("t12d2807h2_d943125447b4_a44c6288192a", "curl 7.88 --tls-max 1.2"),
    // Python 3.11.7 ssl, minimum = maximum = TLSv1_2 / OpenSSL 3.0.19.
    ("t12d280700_d943125447b4_3c5a66c06c35", "Python 3.11 ssl TLSv1_2"),
    // openssl s_client -tls1_2 (3.0.19), to an address.
    ("t12i280600_d943125447b4_e7e480e5a997", "OpenSSL 3.0 s_client -tls1_2"),
    // testssl.sh 3.0.8 (Debian), its SSLv3 probe: 80 suites, no extensions.
    ("ts3i800000_1f3a8b8a208a_000000000000", "testssl.sh 3.0 SSLv3 probe"),
];

/// The name of a client that sends hellos with fingerprint `ja4`, if it is a known one.
pub fn name(ja4: &Ja4) -> Option<&'static str> {
    lookup(ja4.as_str())
}

/// [`name`] for a JA4 as text (any string; unknown ones give `None`).
pub fn lookup(ja4: &str) -> Option<&'static str> {
    NAMES.iter().find(|(j, _)| *j == ja4).map(|(_, n)| *n)
}

/// Every (JA4, name) known.
pub fn all() -> impl Iterator<Item = (&'static str, &'static str)> {
    NAMES.iter().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_ja4s_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (j, n) in all() {
            assert!(j.parse::<Ja4>().is_ok(), "{j} ({n}) is not a JA4");
            assert!(seen.insert(j), "{j} twice");
            assert_eq!(lookup(j), Some(n));
        }
        assert_eq!(lookup("t13d1516h2_8daaf6152771_e5627efa2ab1"), None);
        assert_eq!(lookup(""), None);
    }
}
