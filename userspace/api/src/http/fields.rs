//! Header lookup, comma-separated list values, message framing and hop-by-hop fields.

use super::{Body, Error, Header, Headers};

/// Hop-by-hop fields (RFC 9110 §7.6.1, plus the non-standard `keep-alive`/`proxy-connection`):
/// they describe one connection and are never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Fields that `Connection` cannot make hop-by-hop. They route and frame the message end to end:
/// a forwarded request stripped of its `Content-Length` would have its body read by the origin
/// as the next request.
const NOT_LISTABLE: [&str; 2] = ["host", "content-length"];

/// Whether `name` is a hop-by-hop field (case-insensitive).
pub fn is_hop_by_hop(name: &str) -> bool {
    // The lengths first: they are constants, and they tell nearly every field apart without
    // a call to compare its bytes.
    HOP_BY_HOP.iter().any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop fields and the fields named in `Connection` tokens (except `Host` and
/// `Content-Length`, see above), keeping the order of the rest.
pub fn remove_hop_by_hop(headers: &mut Headers<'_>) {
    // Does a `Connection` token name a field that is here and not hop-by-hop already? Browsers
    // send `Connection: keep-alive` with every HTTP/1.1 request, and `keep-alive` (like
    // `upgrade`) is hop-by-hop itself: for those, the tokens add nothing to remove.
    // Loops rather than `values(..).flat_map(list)`: this runs twice for every request, and
    // the flattening iterator cost a few hundred instructions a time.
    let mut named = false;
    for value in values(headers, "connection") {
        for token in list(value) {
            let Ok(token) = std::str::from_utf8(token) else { continue };
            named |= !is_hop_by_hop(token)
                && !NOT_LISTABLE.iter().any(|n| n.eq_ignore_ascii_case(token))
                && headers.iter().any(|h| h.name.eq_ignore_ascii_case(token));
        }
    }
    if !named {
        headers.remove_where(|h| is_hop_by_hop(&h.name));
        return;
    }
    let drop: Vec<bool> = headers
        .iter()
        .map(|h| {
            is_hop_by_hop(&h.name)
                || (!NOT_LISTABLE.iter().any(|n| n.eq_ignore_ascii_case(&h.name))
                    && connection_has(headers, &h.name))
        })
        .collect();
    let mut i = 0;
    headers.retain(|_| {
        let keep = !drop.get(i).copied().unwrap_or(false);
        i += 1;
        keep
    });
}

/// The first value of field `name` (case-insensitive).
pub(crate) fn find<'a>(headers: &'a [Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
}

/// Every value of field `name` (case-insensitive), in order.
pub(crate) fn values<'a>(
    headers: &'a [Header<'_>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_slice())
}

/// Elements of a comma-separated list value with optional whitespace trimmed. Empty elements
/// are kept so that callers which must refuse them can.
pub(crate) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Whether a `Connection` field lists `token` (case-insensitive).
pub(crate) fn connection_has(headers: &[Header<'_>], token: &str) -> bool {
    values(headers, "connection").flat_map(list).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether an `Upgrade` field lists the protocol `name` (case-insensitive; a `name/version`
/// element counts too).
pub(crate) fn upgrade_has(headers: &[Header<'_>], name: &str) -> bool {
    values(headers, "upgrade").flat_map(list).any(|t| {
        let protocol = t.split(|&b| b == b'/').next().unwrap_or_default();
        protocol.eq_ignore_ascii_case(name.as_bytes())
    })
}

/// Persistence from `Connection` (RFC 9112 §9.3): HTTP/1.1 unless `close`, HTTP/1.0 only with
/// `keep-alive`.
pub(crate) fn keep_alive(headers: &[Header<'_>], minor_version: u8) -> bool {
    if connection_has(headers, "close") {
        false
    } else if minor_version >= 1 {
        true
    } else {
        connection_has(headers, "keep-alive")
    }
}

/// How the body is delimited according to the framing fields alone (RFC 9112 §6.3, the strict
/// reading): `None` when there is neither `Content-Length` nor `Transfer-Encoding`.
pub(crate) fn framing(headers: &[Header<'_>], minor_version: u8) -> Result<Option<Body>, Error> {
    let (mut te, mut cl) = (false, false);
    for h in headers {
        te |= h.name.eq_ignore_ascii_case("transfer-encoding");
        cl |= h.name.eq_ignore_ascii_case("content-length");
    }
    if te && cl {
        return Err(Error::Malformed("both Content-Length and Transfer-Encoding"));
    }
    if te {
        if minor_version == 0 {
            return Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 message"));
        }
        return transfer_coding(headers).map(Some);
    }
    if cl {
        return content_length(headers).map(|n| Some(Body::Length(n)));
    }
    Ok(None)
}

/// Only a lone `chunked` is supported: any other coding would reach the origin without the
/// field that names it, since `Transfer-Encoding` is hop-by-hop.
fn transfer_coding(headers: &[Header<'_>]) -> Result<Body, Error> {
    let (mut codings, mut chunked) = (0usize, 0usize);
    for coding in values(headers, "transfer-encoding").flat_map(list) {
        if coding.is_empty() {
            return Err(Error::Malformed("empty transfer coding"));
        }
        codings += 1;
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        }
    }
    match (codings, chunked) {
        (1, 1) => Ok(Body::Chunked),
        (_, 2..) => Err(Error::Malformed("chunked applied more than once")),
        _ => Err(Error::UnsupportedTransferCoding),
    }
}

/// All `Content-Length` values (fields and list elements) must be the same decimal number.
fn content_length(headers: &[Header<'_>]) -> Result<u64, Error> {
    let mut seen = None;
    // Loops rather than `values(..).flat_map(list)`: this runs for every message with a body,
    // and the flattening iterator cost a few hundred instructions more.
    for value in values(headers, "content-length") {
        for element in list(value) {
            let n = decimal(element)?;
            match seen {
                Some(prev) if prev != n => {
                    return Err(Error::Malformed("conflicting Content-Length values"))
                }
                _ => seen = Some(n),
            }
        }
    }
    seen.ok_or(Error::Malformed("empty Content-Length"))
}

/// `1*DIGIT`, nothing else (no sign, no whitespace inside). A number past `u64` is well-formed
/// but necessarily over any body limit.
fn decimal(digits: &[u8]) -> Result<u64, Error> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Error::Malformed("Content-Length is not a decimal number"));
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        .ok_or(Error::BodyTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header<'static> {
        Header::new(name, value)
    }

    #[test]
    fn list_trims_and_keeps_empty_elements() {
        let got: Vec<&[u8]> = list(b" a ,\tb\t,, c").collect();
        assert_eq!(got, [&b"a"[..], b"b", b"", b"c"]);
        assert_eq!(list(b"").collect::<Vec<_>>(), [&b""[..]]);
        assert_eq!(trim_ows(b" \t "), b"");
    }

    #[test]
    fn decimal_table() {
        let cases: &[(&str, Result<u64, Error>)] = &[
            ("0", Ok(0)),
            ("0042", Ok(42)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("18446744073709551616", Err(Error::BodyTooLarge)),
            ("", Err(Error::Malformed("Content-Length is not a decimal number"))),
            ("+5", Err(Error::Malformed("Content-Length is not a decimal number"))),
            ("-5", Err(Error::Malformed("Content-Length is not a decimal number"))),
            ("0x5", Err(Error::Malformed("Content-Length is not a decimal number"))),
            ("5 5", Err(Error::Malformed("Content-Length is not a decimal number"))),
            ("٥", Err(Error::Malformed("Content-Length is not a decimal number"))),
        ];
        for (input, want) in cases {
            assert_eq!(&decimal(input.as_bytes()), want, "input {input:?}");
        }
    }

    #[test]
    fn framing_table() {
        type Framing = Result<Option<Body>, Error>;
        let malformed = |m| Err(Error::Malformed(m));
        let cases: Vec<(Vec<Header<'static>>, u8, Framing)> = vec![
            (vec![], 1, Ok(None)),
            (vec![h("Content-Length", "7")], 1, Ok(Some(Body::Length(7)))),
            (
                vec![h("content-length", "7, 7"), h("CONTENT-LENGTH", "7")],
                0,
                Ok(Some(Body::Length(7))),
            ),
            (
                vec![h("Content-Length", "7"), h("Content-Length", "8")],
                1,
                malformed("conflicting Content-Length values"),
            ),
            (
                vec![h("Content-Length", "7,")],
                1,
                malformed("Content-Length is not a decimal number"),
            ),
            (vec![h("Transfer-Encoding", "chunked")], 1, Ok(Some(Body::Chunked))),
            (vec![h("Transfer-Encoding", "CHUNKED ")], 1, Ok(Some(Body::Chunked))),
            (
                vec![h("Transfer-Encoding", "chunked")],
                0,
                malformed("Transfer-Encoding in an HTTP/1.0 message"),
            ),
            (
                vec![h("Transfer-Encoding", "gzip, chunked")],
                1,
                Err(Error::UnsupportedTransferCoding),
            ),
            (
                vec![h("Transfer-Encoding", "gzip"), h("Transfer-Encoding", "chunked")],
                1,
                Err(Error::UnsupportedTransferCoding),
            ),
            (
                vec![h("Transfer-Encoding", "chunked, chunked")],
                1,
                malformed("chunked applied more than once"),
            ),
            (vec![h("Transfer-Encoding", "")], 1, malformed("empty transfer coding")),
            (vec![h("Transfer-Encoding", "chunked,")], 1, malformed("empty transfer coding")),
            (vec![h("Transfer-Encoding", "chunked;q=1")], 1, Err(Error::UnsupportedTransferCoding)),
            (
                vec![h("Transfer-Encoding", "chunked"), h("Content-Length", "3")],
                1,
                malformed("both Content-Length and Transfer-Encoding"),
            ),
        ];
        for (headers, minor, want) in cases {
            assert_eq!(framing(&headers, minor), want, "HTTP/1.{minor} {headers:?}");
        }
    }

    #[test]
    fn keep_alive_table() {
        let cases: &[(&[Header<'static>], u8, bool)] = &[
            (&[], 1, true),
            (&[], 0, false),
            (&[h("Connection", "Keep-Alive")], 0, true),
            (&[h("Connection", "upgrade, CLOSE")], 1, false),
            (&[h("Connection", "keep-alive"), h("Connection", "close")], 0, false),
            (&[h("Connection", "closed")], 1, true),
        ];
        for (headers, minor, want) in cases {
            assert_eq!(keep_alive(headers, *minor), *want, "HTTP/1.{minor} {headers:?}");
        }
    }

    #[test]
    fn connection_cannot_strip_framing_or_routing() {
        let mut headers: Headers<'static> = Headers::from([
            h("Host", "a"),
            h("Content-Length", "3"),
            h("X-Secret", "1"),
            h("Connection", "host, content-length, x-secret"),
        ]);
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.as_slice(), [h("Host", "a"), h("Content-Length", "3")]);
    }
}
