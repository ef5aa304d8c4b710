//! JSON request bodies, read the way the docs describe them: one object with exactly the
//! documented fields.
//!
//! serde's derived `Deserialize` also fills a struct from a sequence (`["name", "a@b.test"]`
//! reads as `{"name": "name", "email": "a@b.test"}`), so a body of another shape would be taken
//! for a valid one. [`object`] refuses anything whose top-level value is not an object before
//! serde sees it; the struct itself should say `#[serde(deny_unknown_fields)]`, and serde
//! refuses duplicate and missing fields and `null` for a required one.

use serde::de::DeserializeOwned;

/// `body` as `T`, which must come from a JSON object. The error is a sentence for the client
/// (no input echoed beyond serde's position and field names).
pub fn object<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let first = body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    match first {
        Some(b'{') => serde_json::from_slice(body).map_err(|e| e.to_string()),
        Some(_) => Err("the body is not a JSON object".into()),
        None => Err("the body is empty".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Pair {
        name: String,
        email: String,
    }

    #[test]
    fn only_an_object_with_exactly_the_fields() {
        let ok: Result<Pair, _> = object(b" {\"name\": \"n\", \"email\": \"e\"}\n");
        assert_eq!(ok, Ok(Pair { name: "n".into(), email: "e".into() }));
        for bad in [
            &b"[\"n\", \"e\"]"[..],
            b"\"n\"",
            b"42",
            b"null",
            b"true",
            b"",
            b"  ",
            b"{\"name\": \"n\"}",
            b"{\"name\": \"n\", \"email\": null}",
            b"{\"name\": \"n\", \"email\": \"e\", \"admin\": true}",
            b"{\"name\": \"n\", \"email\": \"e\", \"name\": \"m\"}",
            b"{\"name\": \"n\", \"email\": \"e\"} []",
            b"{\"name\": 1, \"email\": \"e\"}",
        ] {
            let got: Result<Pair, _> = object(bad);
            assert!(got.is_err(), "accepted {:?}", String::from_utf8_lossy(bad));
        }
    }
}
