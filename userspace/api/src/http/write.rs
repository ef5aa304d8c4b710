//! Head serialisation, always HTTP/1.1 with CRLF line ends.
//!
//! The writers take `&str`/bytes rather than checked types, so they neutralise what could split
//! a head: CR, LF and NUL are written as SP. A caller's mistake then yields a head the peer
//! refuses, never a second message or an injected field.

use super::Header;

/// Appends `method SP target SP HTTP/1.1 CRLF`, the fields and the empty line.
pub fn write_request_head(method: &str, target: &str, headers: &[Header<'_>], out: &mut Vec<u8>) {
    push(out, method.as_bytes());
    out.push(b' ');
    push(out, target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(headers, out);
}

/// Appends `HTTP/1.1 SP status SP reason CRLF`, the fields and the empty line. `status` should
/// be 100..=999 (three digits); see [`reason`] for the usual phrase.
pub fn write_response_head(status: u16, reason: &str, headers: &[Header<'_>], out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    // Three digits, written without a formatted String: httparse reads exactly three and
    // handlers answer 1xx to 5xx.
    let status = status.min(999);
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    push(out, reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(headers, out);
}

fn write_fields(headers: &[Header<'_>], out: &mut Vec<u8>) {
    for h in headers {
        push(out, h.name.as_bytes());
        out.extend_from_slice(b": ");
        push(out, &h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(bytes.iter().map(|&b| if matches!(b, b'\r' | b'\n' | 0) { b' ' } else { b }));
}

/// The reason phrase registered for `status` (RFC 9110 §15 and the IANA registry), or `""`.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exact_bytes() {
        let headers = [Header::new("Host", "a.example"), Header::new("X-Empty", "")];
        let mut out = Vec::new();
        write_request_head("GET", "/p?q", &headers, &mut out);
        assert_eq!(out, b"GET /p?q HTTP/1.1\r\nHost: a.example\r\nX-Empty: \r\n\r\n");
        out.clear();
        write_response_head(204, reason(204), &[], &mut out);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
        out.clear();
        write_response_head(599, reason(599), &[], &mut out);
        assert_eq!(out, b"HTTP/1.1 599 \r\n\r\n");
    }

    #[test]
    fn every_cr_lf_and_nul_becomes_a_space_wherever_it_is() {
        // Every position in values of up to 40 bytes, and every byte value there.
        for len in 0..40 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut value = vec![b'a'; len];
                    value[at] = b;
                    let mut out = Vec::new();
                    push(&mut out, &value);
                    let mut want = vec![b'a'; len];
                    want[at] = if matches!(b, b'\r' | b'\n' | 0) { b' ' } else { b };
                    assert_eq!(out, want, "length {len}, byte {b:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn line_breaks_cannot_be_injected() {
        let headers = [Header::new("X-A", "1\r\nX-Injected: 1\0")];
        let mut out = Vec::new();
        write_request_head("GET", "/\r\n\r\nGET /admin", &headers, &mut out);
        let text = out.escape_ascii().to_string();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 3, "{text}");
        assert!(!out.contains(&0), "{text}");
    }
}
