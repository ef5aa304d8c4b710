//! Email addresses within RFC 5321's limits, in the one form the store keys on.
//!
//! Accepted: a dot-atom local part (RFC 5322 `atext` and single dots; quoted local parts and
//! non-ASCII local parts are refused: few mail systems take them, and they invite spoofing),
//! `@`, and a domain of at least two LDH labels. The domain is folded to lowercase
//! (internationalised domains become punycode); the local part keeps its case, as RFC 5321
//! says it is the receiving system's to interpret. Limits: local part 64 octets, domain 255,
//! whole address 254 (the 256-octet path less its angle brackets).

use std::fmt;

/// A checked address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

/// Why an address was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmailError {
    Empty,
    /// No `@`, or nothing after it.
    NoDomain,
    /// Nothing before the `@`.
    NoLocalPart,
    /// Over RFC 5321's limits.
    TooLong,
    /// A character, dot or label the syntax does not allow.
    Syntax,
}

impl EmailError {
    pub fn code(&self) -> &'static str {
        match self {
            EmailError::Empty => "email_empty",
            EmailError::NoDomain => "email_no_domain",
            EmailError::NoLocalPart => "email_no_local_part",
            EmailError::TooLong => "email_too_long",
            EmailError::Syntax => "email_invalid",
        }
    }
}

impl fmt::Display for EmailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EmailError::Empty => "Enter your email address.",
            EmailError::NoDomain => {
                "The email address needs a domain after the @, such as example.com."
            }
            EmailError::NoLocalPart => "The email address needs a name before the @.",
            EmailError::TooLong => {
                "The email address is too long (at most 64 characters before the @ and 254 in all)."
            }
            EmailError::Syntax => "This is not a valid email address.",
        })
    }
}

impl Email {
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(EmailError::NoDomain);
        };
        if domain.is_empty() {
            return Err(EmailError::NoDomain);
        }
        if local.is_empty() {
            return Err(EmailError::NoLocalPart);
        }
        if local.len() > 64 {
            return Err(EmailError::TooLong);
        }
        if !dot_atom(local) {
            return Err(EmailError::Syntax);
        }
        let domain = if domain.is_ascii() {
            domain.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii_strict(domain).map_err(|_| EmailError::Syntax)?
        };
        if domain.len() > 255 || local.len() + 1 + domain.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(EmailError::NoDomain);
        }
        for l in &labels {
            let ok = !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(EmailError::Syntax);
            }
        }
        if labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
            // 10.0.0.1 is not a domain; address literals are refused.
            return Err(EmailError::Syntax);
        }
        Ok(Email(format!("{local}@{domain}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 5322 dot-atom: atext runs separated by single dots.
fn dot_atom(s: &str) -> bool {
    s.split('.').all(|atom| {
        !atom.is_empty()
            && atom
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ok = |s: &str| Email::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).0;
        assert_eq!(ok("Alice@Example.COM"), "Alice@example.com");
        assert_eq!(ok(" bob+tag@mail.example.org "), "bob+tag@mail.example.org");
        assert_eq!(ok("o'brien@example.ie"), "o'brien@example.ie");
        assert_eq!(ok("x@bücher.example"), "x@xn--bcher-kva.example");
        let err = |s: &str| Email::parse(s).expect_err(s);
        assert_eq!(err(""), EmailError::Empty);
        assert_eq!(err("alice"), EmailError::NoDomain);
        assert_eq!(err("alice@"), EmailError::NoDomain);
        assert_eq!(err("alice@localhost"), EmailError::NoDomain);
        assert_eq!(err("@example.com"), EmailError::NoLocalPart);
        assert_eq!(err("a..b@example.com"), EmailError::Syntax);
        assert_eq!(err(".a@example.com"), EmailError::Syntax);
        assert_eq!(err("a b@example.com"), EmailError::Syntax);
        assert_eq!(err("\"a b\"@example.com"), EmailError::Syntax);
        assert_eq!(err("a@-x.com"), EmailError::Syntax);
        assert_eq!(err("a@x..com"), EmailError::Syntax);
        assert_eq!(err("a@10.0.0.1"), EmailError::Syntax);
        assert_eq!(err("a@b@example.com"), EmailError::Syntax);
        assert_eq!(err("a\r\nBcc: x@y.z@example.com"), EmailError::Syntax);
        assert_eq!(err(&format!("{}@example.com", "a".repeat(65))), EmailError::TooLong);
        let long_domain = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert_eq!(err(&format!("abc@{long_domain}")), EmailError::TooLong);
    }
}
