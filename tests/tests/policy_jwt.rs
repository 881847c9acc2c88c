//! `jwt-validation-flex` end to end: the built gateway in front of a real origin lets a valid
//! token through and answers others 401 with `WWW-Authenticate`; with `jwksUrl`, keys come
//! from a JWKS an in-process origin serves, and a rotated key is picked up without a restart.
//! Tokens are signed here, with keys generated here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use ringwall_tests::yaml::*;
use ringwall_tests::*;
use serde_json::json;

/// ApiInstance `api` to `origin`, with a `jwt-validation-flex` binding whose config is
/// `config` (YAML, indented by four spaces).
fn jwt_api(origin: &Origin, config: &str) -> String {
    let binding = format!(
        "apiVersion: {API_VERSION}\nkind: PolicyBinding\nmetadata:\n  name: jwt\nspec:\n  \
         targetRef:\n    name: api\n  policyRef:\n    name: jwt-validation-flex\n  config:\n{config}"
    );
    documents(&[&simple_api(&origin.url()), &binding])
}

fn with_bearer(token: &str) -> Vec<u8> {
    format!("GET /orders HTTP/1.1\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

fn claims(exp_from_now: i64) -> serde_json::Value {
    let exp = get_current_timestamp().saturating_add_signed(exp_from_now);
    json!({"sub": "alice", "client_id": "app-1", "exp": exp})
}

const SECRET: &str = "an hmac secret of at least 32 bytes";

#[test]
fn a_valid_token_reaches_the_origin_and_others_get_401() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        let config = format!(
            "    signingMethod: hmac\n    signingKeyLength: 256\n    textKey: '{SECRET}'\n"
        );
        let gw = Gateway::start(&[("api.yaml", &jwt_api(&origin, &config))], &[]);
        let mut client = Client::connect(gw.addr("api"));
        let key = EncodingKey::from_secret(SECRET.as_bytes());

        let token = encode(&Header::new(Algorithm::HS256), &claims(300), &key).expect("sign");
        let resp = client.request(&with_bearer(&token));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), "orders");
        // The credential goes on to the origin, which may read the claims.
        let seen = origin.single_request();
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );

        let expired = encode(&Header::new(Algorithm::HS256), &claims(-300), &key).expect("sign");
        let wrong_key = EncodingKey::from_secret(b"another secret, also 32 bytes long!!");
        let forged =
            encode(&Header::new(Algorithm::HS256), &claims(300), &wrong_key).expect("sign");
        for (token, reason) in [
            (expired.as_str(), "token expired"),
            (forged.as_str(), "invalid token"),
            ("not.a.token", "invalid token"),
        ] {
            let resp = client.request(&with_bearer(token));
            assert_eq!(resp.status, 401, "{reason}");
            assert_eq!(resp.text().trim_end(), reason);
            assert_eq!(
                resp.header("www-authenticate"),
                Some("Bearer error=\"invalid_token\"")
            );
        }
        let resp = client.request(b"GET /orders HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        assert_eq!(resp.status, 401);
        assert_eq!(resp.text().trim_end(), "missing token");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        // None of the refused requests reached the origin.
        assert_eq!(origin.request_count(), 1);
    });
}

/// An RSA key pair: the signing key and its public JWK under `kid`.
fn rsa_pair(kid: &str) -> (EncodingKey, serde_json::Value) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa key");
    let der = private.to_pkcs1_der().expect("pkcs1");
    let key = EncodingKey::from_rsa_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    (key, serde_json::to_value(jwk).expect("json"))
}

fn signed(kid: &str, key: &EncodingKey) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::RS256)
    };
    encode(&header, &claims(300), key).expect("sign")
}

/// Sends `token` until the gateway answers 200, which it must within five seconds.
fn passes_eventually(client: &mut Client, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = client.request(&with_bearer(token));
        if resp.status == 200 {
            return;
        }
        assert_eq!(resp.status, 401, "{}", resp.text());
        assert!(
            Instant::now() < deadline,
            "still refused after 5 s: {}",
            resp.text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rotated_jwks_keys_are_picked_up_without_a_restart() {
    within(TEST_LIMIT, || {
        let (key_a, jwk_a) = rsa_pair("key-a");
        let (key_b, jwk_b) = rsa_pair("key-b");
        // The identity provider: serves the set `current` points at.
        let sets = [
            json!({"keys": [jwk_a]}).to_string(),
            json!({"keys": [jwk_b]}).to_string(),
        ];
        let current = Arc::new(AtomicUsize::new(0));
        let serving = current.clone();
        let idp = Origin::start(move |_| {
            Reply::ok(sets[serving.load(Ordering::SeqCst)].clone())
                .header("Content-Type", "application/json")
        });

        let origin = Origin::ok("orders");
        let config = format!(
            "    signingMethod: rsa\n    signingKeyLength: 256\n    jwtKeyOrigin: jwks\n    \
             jwksUrl: {}/.well-known/jwks.json\n    jwksServiceTimeToLive: 60\n    \
             skipClientIdValidation: true\n",
            idp.url()
        );
        let gw = Gateway::start(&[("api.yaml", &jwt_api(&origin, &config))], &[]);
        let mut client = Client::connect(gw.addr("api"));
        let token_a = signed("key-a", &key_a);
        let token_b = signed("key-b", &key_b);

        // The first fetch runs in the background after the load.
        passes_eventually(&mut client, &token_a);
        assert_eq!(idp.requests()[0].path, "/.well-known/jwks.json");

        // The provider rotates to B. The TTL is an hour away: B's unknown `kid` is refused
        // and asks for an early fetch, which picks B up without a restart or a reload.
        let fetches = idp.request_count();
        current.store(1, Ordering::SeqCst);
        let resp = client.request(&with_bearer(&token_b));
        assert_eq!(resp.status, 401);
        assert_eq!(resp.text().trim_end(), "invalid token");
        passes_eventually(&mut client, &token_b);
        assert!(idp.request_count() > fetches);

        // A is gone from the set, and from the gateway's.
        let resp = client.request(&with_bearer(&token_a));
        assert_eq!(resp.status, 401);
        assert_eq!(resp.text().trim_end(), "invalid token");
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
    });
}
