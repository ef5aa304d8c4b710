//! Tokens and the node secret.
//!
//! A confirm token is 32 bytes from the system's CSPRNG (`ring::rand::SystemRandom`), shown as
//! 64 hex digits in the link. The store keeps only its SHA-256 (the token row's key): a copy
//! of the database cannot confirm anything. The mail, though, must carry the token until it is
//! sent, and the outbox row is in the same database; so the token travels sealed
//! (ChaCha20-Poly1305 under a key derived from the node secret), never in the clear.
//!
//! The node secret also keys the CSRF tokens of the form (HMAC-SHA256 of the cookie value).
//! It comes from `[reserve] secret_file`, or `<data_dir>/reserve.secret` created on first
//! start; nodes sharing one PostgreSQL must share the file, or one node could not open
//! another's sealed tokens.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use ring::{aead, digest, hmac, rand::SecureRandom as _};

/// Bytes of a confirm token.
pub const TOKEN_BYTES: usize = 32;

/// A fresh confirm token.
pub fn new_token() -> [u8; TOKEN_BYTES] {
    let mut t = [0u8; TOKEN_BYTES];
    ring::rand::SystemRandom::new().fill(&mut t).expect("the system CSPRNG works");
    t
}

/// The store key of a token: hex SHA-256.
pub fn token_key(token: &[u8; TOKEN_BYTES]) -> String {
    hex(digest::digest(&digest::SHA256, token).as_ref())
}

/// A token from a link: exactly 64 hex digits.
pub fn parse_token(s: &str) -> Option<[u8; TOKEN_BYTES]> {
    let v = unhex(s.trim())?;
    v.try_into().ok()
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(nib(p[0])? << 4 | nib(p[1])?)).collect()
}

/// Keys derived from the node secret.
pub struct Secret {
    seal: aead::LessSafeKey,
    csrf: hmac::Key,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// From `file`, or from `<data_dir>/reserve.secret` (created with 32 random bytes, mode
    /// 0600, when missing).
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<Secret> {
        let path: PathBuf = match file {
            Some(f) => f.to_owned(),
            None => {
                let p = data_dir.join("reserve.secret");
                if !p.exists() {
                    create_secret(&p)?;
                }
                p
            }
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading the secret {}", path.display()))?;
        if bytes.len() < 16 {
            bail!("the secret {} is shorter than 16 bytes", path.display());
        }
        Ok(Secret::from_bytes(&bytes))
    }

    pub fn from_bytes(material: &[u8]) -> Secret {
        let root = hmac::Key::new(hmac::HMAC_SHA256, material);
        let derive = |label: &[u8]| hmac::sign(&root, label);
        let seal_key = derive(b"outpost-reserve token seal v1");
        let csrf_key = derive(b"outpost-reserve csrf v1");
        Secret {
            seal: aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::CHACHA20_POLY1305, seal_key.as_ref())
                    .expect("32-byte key"),
            ),
            csrf: hmac::Key::new(hmac::HMAC_SHA256, csrf_key.as_ref()),
        }
    }

    /// The token sealed for the outbox: hex(nonce || ciphertext || tag). `aad` binds it to
    /// its reservation (the name), so a sealed token cannot be moved to another mail.
    pub fn seal(&self, token: &[u8; TOKEN_BYTES], aad: &str) -> String {
        let mut nonce = [0u8; aead::NONCE_LEN];
        ring::rand::SystemRandom::new().fill(&mut nonce).expect("the system CSPRNG works");
        let mut buf = token.to_vec();
        self.seal
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .expect("sealing a 32-byte token cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        hex(&out)
    }

    /// The inverse of [`seal`](Self::seal); None when the secret differs or the data was
    /// altered.
    pub fn open(&self, sealed: &str, aad: &str) -> Option<[u8; TOKEN_BYTES]> {
        let raw = unhex(sealed)?;
        if raw.len() != aead::NONCE_LEN + TOKEN_BYTES + aead::CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (nonce, rest) = raw.split_at(aead::NONCE_LEN);
        let mut buf = rest.to_vec();
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain =
            self.seal.open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut buf).ok()?;
        plain.try_into().ok()
    }

    /// The form's CSRF field for a cookie value.
    pub fn csrf_for(&self, cookie: &str) -> String {
        hex(hmac::sign(&self.csrf, cookie.as_bytes()).as_ref())
    }

    /// Whether `field` is the CSRF field for `cookie` (constant time).
    pub fn csrf_ok(&self, cookie: &str, field: &str) -> bool {
        match unhex(field) {
            Some(tag) => hmac::verify(&self.csrf, cookie.as_bytes(), &tag).is_ok(),
            None => false,
        }
    }
}

/// A new random cookie value for the CSRF pair.
pub fn new_cookie_value() -> String {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the system CSPRNG works");
    hex(&b)
}

fn create_secret(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system CSPRNG works");
    let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    match made {
        Ok(mut f) => {
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(())
        }
        // Another build (a reload, a second app instance) made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the secret {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = new_token();
        assert_ne!(t, new_token());
        let h = hex(&t);
        assert_eq!(parse_token(&h), Some(t));
        assert_eq!(parse_token(&h.to_uppercase()), Some(t));
        assert_eq!(parse_token(&h[..62]), None);
        assert_eq!(parse_token(&format!("{}zz", &h[..62])), None);
        assert_eq!(token_key(&t).len(), 64);
        assert_ne!(token_key(&t), h, "the key is a hash, not the token");
    }

    #[test]
    fn sealing() {
        let s = Secret::from_bytes(b"0123456789abcdef0123456789abcdef");
        let t = new_token();
        let sealed = s.seal(&t, "alice");
        assert!(!sealed.contains(&hex(&t)));
        assert_eq!(s.open(&sealed, "alice"), Some(t));
        assert_eq!(s.open(&sealed, "bob"), None, "bound to its name");
        let other = Secret::from_bytes(b"another secret, another node....");
        assert_eq!(other.open(&sealed, "alice"), None);
        let mut bad = sealed.into_bytes();
        bad[30] = if bad[30] == b'0' { b'1' } else { b'0' };
        assert_eq!(s.open(std::str::from_utf8(&bad).unwrap(), "alice"), None);
    }

    #[test]
    fn csrf() {
        let s = Secret::from_bytes(b"0123456789abcdef0123456789abcdef");
        let c = new_cookie_value();
        let f = s.csrf_for(&c);
        assert!(s.csrf_ok(&c, &f));
        assert!(!s.csrf_ok(&new_cookie_value(), &f));
        assert!(!s.csrf_ok(&c, "00"));
        assert!(!s.csrf_ok(&c, ""));
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = std::env::temp_dir().join(format!("reserve-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Secret::load(None, &dir).unwrap();
        let b = Secret::load(None, &dir).unwrap();
        let t = new_token();
        assert_eq!(b.open(&a.seal(&t, "n"), "n"), Some(t));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
