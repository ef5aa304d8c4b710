//! The ID token's checks, one by one. A real provider only ever sends good tokens, so these
//! runs use a provider of the test's own (HTTPS, discovery, keys, authorization, token
//! endpoint) that answers the code exchange with a token spoiled in exactly one way: wrong
//! nonce, audience, `azp`, issuer, signature or key, expired, issued long ago, `alg: none`.
//! Each must end in the 502 page and an audit event, with nobody signed in; the unspoiled
//! token must sign the user in.

mod support;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

use outpost_access::keys::EdgeKey;
use support::*;

/// How the next ID token is spoiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spoil {
    None,
    Nonce,
    Audience,
    ExtraAudienceNoAzp,
    Azp,
    Issuer,
    Expired,
    IssuedLongAgo,
    IssuedInTheFuture,
    Signature,
    UnknownKey,
    AlgNone,
    EmailUnverified,
}

struct FakeIdp {
    port: u16,
    ca: std::path::PathBuf,
    spoil: Arc<Mutex<Spoil>>,
    _dir: TempDir,
}

impl FakeIdp {
    fn start() -> FakeIdp {
        let dir = TempDir::new("fake-idp");
        let (ca, cert, key) = tls_files(&dir.0);
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> = {
            let pem = std::fs::read_to_string(&cert).unwrap();
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            use base64::Engine as _;
            vec![base64::engine::general_purpose::STANDARD.decode(b64).unwrap().into()]
        };
        let key_der = {
            let pem = std::fs::read_to_string(&key).unwrap();
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            use base64::Engine as _;
            rustls::pki_types::PrivateKeyDer::Pkcs8(
                base64::engine::general_purpose::STANDARD.decode(b64).unwrap().into(),
            )
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key_der)
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let spoil = Arc::new(Mutex::new(Spoil::None));
        let state = Arc::new(Shared {
            issuer: format!("https://127.0.0.1:{port}"),
            key: EdgeKey::generate().unwrap(),
            other: EdgeKey::generate().unwrap(),
            spoil: spoil.clone(),
            nonces: Mutex::new(HashMap::new()),
        });
        thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let (tls, state) = (tls.clone(), state.clone());
                thread::spawn(move || serve(s, tls, &state));
            }
        });
        FakeIdp { port, ca, spoil, _dir: dir }
    }

    fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

struct Shared {
    issuer: String,
    key: EdgeKey,
    /// Never published.
    other: EdgeKey,
    spoil: Arc<Mutex<Spoil>>,
    /// code -> nonce of the authorization it answers.
    nonces: Mutex<HashMap<String, String>>,
}

fn serve(s: TcpStream, tls: Arc<rustls::ServerConfig>, st: &Shared) {
    let conn = rustls::ServerConnection::new(tls).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, s);
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split(' ').nth(1).unwrap_or("/").to_owned();
    let mut len = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let q: HashMap<String, String> = serde_urlencoded::from_str(query).unwrap_or_default();
    let (status, ctype, extra, out) = match path {
        "/.well-known/openid-configuration" => (
            200,
            "application/json",
            String::new(),
            serde_json::json!({
                "issuer": st.issuer,
                "authorization_endpoint": format!("{}/auth", st.issuer),
                "token_endpoint": format!("{}/token", st.issuer),
                "jwks_uri": format!("{}/jwks", st.issuer),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            })
            .to_string(),
        ),
        "/jwks" => (
            200,
            "application/json",
            String::new(),
            serde_json::json!({ "keys": [st.key.jwk()] }).to_string(),
        ),
        "/auth" => {
            let code = outpost_access::random_token(16);
            st.nonces.lock().unwrap().insert(code.clone(), q["nonce"].clone());
            let back = format!(
                "{}?{}",
                q["redirect_uri"],
                serde_urlencoded::to_string([
                    ("code", code.as_str()),
                    ("state", q["state"].as_str())
                ])
                .unwrap()
            );
            (302, "text/plain", format!("Location: {back}\r\n"), String::new())
        }
        "/token" => {
            let form: HashMap<String, String> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let nonce = st.nonces.lock().unwrap().remove(&form["code"]).unwrap_or_default();
            let token = id_token(st, &nonce);
            (
                200,
                "application/json",
                String::new(),
                serde_json::json!({ "access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": token })
                    .to_string(),
            )
        }
        _ => (404, "text/plain", String::new(), String::new()),
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{out}",
        out.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

fn id_token(st: &Shared, nonce: &str) -> String {
    let spoil = *st.spoil.lock().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut c = serde_json::json!({
        "iss": st.issuer, "aud": CLIENT_ID, "sub": "fake-alice",
        "email": "alice@example.test", "email_verified": true,
        "iat": now, "exp": now + 300, "nonce": nonce,
    });
    match spoil {
        Spoil::None | Spoil::Signature | Spoil::UnknownKey | Spoil::AlgNone => {}
        Spoil::Nonce => c["nonce"] = "another-nonce".into(),
        Spoil::Audience => c["aud"] = "another-client".into(),
        Spoil::ExtraAudienceNoAzp => c["aud"] = serde_json::json!([CLIENT_ID, "another-client"]),
        Spoil::Azp => c["azp"] = "another-client".into(),
        Spoil::Issuer => c["iss"] = "https://evil.test".into(),
        Spoil::Expired => c["exp"] = (now - 600).into(),
        Spoil::IssuedLongAgo => c["iat"] = (now - 3600).into(),
        Spoil::IssuedInTheFuture => c["iat"] = (now + 3600).into(),
        Spoil::EmailUnverified => c["email_verified"] = false.into(),
    }
    match spoil {
        Spoil::Signature => {
            // Our kid, another key's signature.
            let good = st.key.sign(&c).unwrap();
            let bad = st.other.sign(&c).unwrap();
            let (g, b): (Vec<&str>, Vec<&str>) =
                (good.split('.').collect(), bad.split('.').collect());
            format!("{}.{}.{}", g[0], g[1], b[2])
        }
        Spoil::UnknownKey => st.other.sign(&c).unwrap(),
        Spoil::AlgNone => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!("{}.{}.", b64.encode(r#"{"alg":"none"}"#), b64.encode(c.to_string()))
        }
        _ => st.key.sign(&c).unwrap(),
    }
}

#[test]
fn every_id_token_check_refuses_its_spoiled_token() {
    let idp = FakeIdp::start();
    let port = free_port();
    let origin = Origin::start("app");
    let secret_dir = TempDir::new("fake-idp-secret");
    let secret = secret_dir.0.join("secret");
    std::fs::write(&secret, "s").unwrap();
    let provider = format!(
        "name = \"fake\"\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret_file = \"{}\"\nca_file = \"{}\"\n",
        idp.issuer(),
        secret.display(),
        idp.ca.display(),
    );
    let config = access_config(port, &origin.addr(), &provider, "jwks_refetch_min_secs = 0");
    let edge = Outpost::start_at(port, "uring", &config, &[], &["--no-xdp"]);

    let login = |spoil: Spoil| {
        *idp.spoil.lock().unwrap() = spoil;
        let b = Browser::new(port);
        let page = b.follow(b.nav(&format!("https://{WIKI}:{port}/in"))).pop().unwrap();
        let to_idp = b.choose_provider(&page);
        assert_eq!(to_idp.status, 302, "{spoil:?}: {}", to_idp.body);
        let end = b.follow(to_idp).pop().unwrap();
        (b, end)
    };
    let (b, end) = login(Spoil::None);
    assert_eq!(end.status, 200, "the unspoiled token: {}", end.body);
    assert_eq!(
        end.echoed("Outpost-Access-Authenticated-User-Email").as_deref(),
        Some("alice@example.test")
    );
    assert!(b.cookie(&format!("https://{WIKI}:{port}/"), "__Host-outpost-token").is_some());

    for (spoil, reason) in [
        (Spoil::Nonce, "Invalid nonce"),
        (Spoil::Audience, "Invalid audiences: must contain"),
        (Spoil::ExtraAudienceNoAzp, "is not a trusted audience"),
        (Spoil::Azp, "azp is another-client"),
        (Spoil::Issuer, "Invalid issuer"),
        (Spoil::Expired, "Expired: ID token expired"),
        // 3600 s when minted; a second or more by the check (a CI run saw 3601).
        (Spoil::IssuedLongAgo, "issued 360"),
        (Spoil::IssuedInTheFuture, "issued in the future"),
        (Spoil::Signature, "Crypto error"),
        (Spoil::UnknownKey, "No matching key found"),
        (Spoil::AlgNone, "ID token invalid"),
    ] {
        let (b, end) = login(spoil);
        assert_eq!(end.status, 502, "{spoil:?} was accepted: {} {}", end.url, end.body);
        assert!(end.body.contains("could not be verified"), "{spoil:?}: {}", end.body);
        assert!(
            b.cookie(&format!("https://{WIKI}:{port}/"), "__Host-outpost-token").is_none(),
            "{spoil:?}"
        );
        assert!(
            b.cookie(&format!("https://{AUTH}:{port}/"), "__Host-outpost-session").is_none(),
            "{spoil:?}"
        );
        wait_event(&edge, "access.login", "error", reason);
    }
    // An unverified email where the policy is by domain: signed in by the provider, refused
    // by the policy.
    let (_, end) = login(Spoil::EmailUnverified);
    assert_eq!(end.status, 403, "{}", end.body);
    wait_event(&edge, "access.login", "denied", "email not verified");
}
