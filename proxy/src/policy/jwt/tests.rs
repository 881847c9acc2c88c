//! `jwt-validation-flex` driven through `compile` as a load would, with tokens signed here by
//! keys generated once per test binary (RSA 2048 takes ~0.1 s with the dev profile's
//! optimised bignum crates), and the JWKS cache driven through a fake fetch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, EncodingKey, Header};
use rand::rngs::OsRng;
use serde_json::json;

use super::jwks::{self, Fetch, Jwks, Source};
use super::*;
use crate::policy::tests::{compiled, error_of, run, with_policy};

struct TestKeys {
    rsa: (EncodingKey, String),
    rsa_other: EncodingKey,
    p256: (EncodingKey, String),
    p256_other: EncodingKey,
    p384: (EncodingKey, String),
}

fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: rsa_key(),
        rsa_other: rsa_key().0,
        p256: p256_key(),
        p256_other: p256_key().0,
        p384: p384_key(),
    })
}

/// A private key to sign with and the public key in PEM.
fn rsa_key() -> (EncodingKey, String) {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa key");
    let der = key.to_pkcs1_der().expect("pkcs1");
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    (EncodingKey::from_rsa_der(der.as_bytes()), public)
}

fn p256_key() -> (EncodingKey, String) {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = p256::SecretKey::random(&mut OsRng);
    let der = key.to_pkcs8_der().expect("pkcs8");
    let public = key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    (EncodingKey::from_ec_der(der.as_bytes()), public)
}

fn p384_key() -> (EncodingKey, String) {
    use p384::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = p384::SecretKey::random(&mut OsRng);
    let der = key.to_pkcs8_der().expect("pkcs8");
    let public = key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    (EncodingKey::from_ec_der(der.as_bytes()), public)
}

const SECRET_256: &str = "0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims every policy here accepts unless a test says otherwise.
fn claims() -> serde_json::Value {
    json!({"sub": "alice", "client_id": "app-1", "exp": now() + 300})
}

fn sign(alg: Algorithm, claims: &serde_json::Value, key: &EncodingKey) -> String {
    encode(&Header::new(alg), claims, key).expect("sign")
}

fn sign_kid(alg: Algorithm, kid: &str, claims: &serde_json::Value, key: &EncodingKey) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(alg)
    };
    encode(&header, claims, key).expect("sign")
}

fn policy(config: &str) -> String {
    with_policy("jwt-validation-flex", config)
}

/// `textKey` as a YAML block of the PEM.
fn pem_config(method: &str, length: u32, pem: &str) -> String {
    let mut out =
        format!("    signingMethod: {method}\n    signingKeyLength: {length}\n    textKey: |\n");
    for line in pem.lines() {
        out.push_str("      ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn hmac_config(length: u32, secret: &str) -> String {
    format!("    signingMethod: hmac\n    signingKeyLength: {length}\n    textKey: '{secret}'\n")
}

fn with_bearer(token: &str) -> Vec<u8> {
    format!("GET /orders HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n").into_bytes()
}

/// The refusal of `raw` by the policy of `yaml`, `None` when it passes.
fn refusal_of(yaml: &str, raw: &[u8]) -> Option<(u16, &'static str)> {
    let (snapshot, policies) = compiled(yaml).expect("valid config");
    run(&policies, &snapshot, raw, "192.0.2.1:5000").verdict
}

fn reason(yaml: &str, token: &str) -> Option<&'static str> {
    refusal_of(yaml, &with_bearer(token)).map(|(status, why)| {
        assert_eq!(status, 401);
        why
    })
}

// === Algorithms and signatures ===

#[test]
fn each_algorithm_verifies_its_own_signatures_only() {
    let k = keys();
    let c = claims();
    let secrets = [
        (256, SECRET_256.to_owned()),
        (384, "s".repeat(48)),
        (512, "t".repeat(64)),
    ];
    for ((length, secret), alg) in
        secrets
            .iter()
            .zip([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
    {
        let yaml = policy(&hmac_config(*length, secret));
        let key = EncodingKey::from_secret(secret.as_bytes());
        assert_eq!(reason(&yaml, &sign(alg, &c, &key)), None, "{alg:?}");
        let wrong = EncodingKey::from_secret(&[b'x'; 64]);
        assert_eq!(
            reason(&yaml, &sign(alg, &c, &wrong)),
            Some(INVALID),
            "{alg:?}"
        );
    }
    for (length, alg) in [
        (256, Algorithm::RS256),
        (384, Algorithm::RS384),
        (512, Algorithm::RS512),
    ] {
        let yaml = policy(&pem_config("rsa", length, &k.rsa.1));
        assert_eq!(reason(&yaml, &sign(alg, &c, &k.rsa.0)), None, "{alg:?}");
        assert_eq!(
            reason(&yaml, &sign(alg, &c, &k.rsa_other)),
            Some(INVALID),
            "{alg:?}"
        );
    }
    let yaml = policy(&pem_config("es", 256, &k.p256.1));
    assert_eq!(reason(&yaml, &sign(Algorithm::ES256, &c, &k.p256.0)), None);
    assert_eq!(
        reason(&yaml, &sign(Algorithm::ES256, &c, &k.p256_other)),
        Some(INVALID)
    );
    let yaml = policy(&pem_config("es", 384, &k.p384.1));
    assert_eq!(reason(&yaml, &sign(Algorithm::ES384, &c, &k.p384.0)), None);
}

#[test]
fn only_the_configured_algorithm_is_taken() {
    let k = keys();
    let c = claims();
    // A longer hash than configured, same key: still refused.
    let yaml = policy(&pem_config("rsa", 256, &k.rsa.1));
    assert_eq!(
        reason(&yaml, &sign(Algorithm::RS512, &c, &k.rsa.0)),
        Some(INVALID)
    );
    let yaml = policy(&hmac_config(256, SECRET_256));
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    assert_eq!(
        reason(&yaml, &sign(Algorithm::HS384, &c, &key)),
        Some(INVALID)
    );
}

#[test]
fn an_hmac_token_keyed_with_the_rsa_public_key_is_refused() {
    // Algorithm confusion: the attacker knows the public key and "signs" with it as an HMAC
    // secret, hoping the verifier uses the key as the token's header says.
    let k = keys();
    let yaml = policy(&pem_config("rsa", 256, &k.rsa.1));
    let forged_key = EncodingKey::from_secret(k.rsa.1.as_bytes());
    let forged = sign(Algorithm::HS256, &claims(), &forged_key);
    assert_eq!(reason(&yaml, &forged), Some(INVALID));
}

#[test]
fn unsigned_tokens_are_refused() {
    let yaml = policy(&hmac_config(256, SECRET_256));
    // {"sub":"alice","client_id":"app-1"}: claims the policy would otherwise accept.
    let payload = "eyJzdWIiOiJhbGljZSIsImNsaWVudF9pZCI6ImFwcC0xIn0";
    for header in [
        // {"alg":"none","typ":"JWT"}, {"alg":"None"}, {"alg":"HS256","typ":"JWT"}
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        "eyJhbGciOiJOb25lIn0",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",
    ] {
        let token = format!("{header}.{payload}.");
        assert_eq!(reason(&yaml, &token), Some(INVALID), "{header}");
    }
    // The same claims signed pass: the refusals above are the missing signature's.
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let signed = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "client_id": "app-1"}),
        &key,
    );
    assert_eq!(reason(&yaml, &signed), None);
}

#[test]
fn malformed_tokens_are_invalid_and_say_so() {
    let yaml = policy(&hmac_config(256, SECRET_256));
    for token in [
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
    ] {
        assert_eq!(reason(&yaml, token), Some(INVALID), "{token}");
    }
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    let out = run(&policies, &snapshot, &with_bearer("abc"), "192.0.2.1:1");
    assert_eq!(
        out.client,
        "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"
    );
}

// === Where the token is ===

#[test]
fn a_missing_token_asks_for_one() {
    let yaml = policy(&hmac_config(256, SECRET_256));
    let (snapshot, policies) = compiled(&yaml).expect("valid");
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YTpi\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearertoken\r\n\r\n",
    ] {
        let out = run(&policies, &snapshot, raw, "192.0.2.1:1");
        assert_eq!(out.verdict, Some((401, MISSING)));
        assert_eq!(out.client, "WWW-Authenticate: Bearer\r\n");
    }
    // The scheme is case-insensitive.
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let token = sign(Algorithm::HS256, &claims(), &key);
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: bearer  {token}\r\n\r\n");
    assert_eq!(refusal_of(&yaml, raw.as_bytes()), None);
}

#[test]
fn a_custom_origin_reads_its_expression() {
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let token = sign(Algorithm::HS256, &claims(), &key);
    let base = hmac_config(256, SECRET_256);
    // Flex's default expression: the `jwt` header.
    let yaml = policy(&format!("{base}    jwtOrigin: customExpression\n"));
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\njwt: {token}\r\n\r\n");
    assert_eq!(refusal_of(&yaml, raw.as_bytes()), None);
    assert_eq!(
        refusal_of(&yaml, &with_bearer(&token)),
        Some((401, MISSING))
    );

    let yaml = policy(&format!(
        "{base}    jwtOrigin: customExpression\n    jwtExpression: \"#[attributes.queryParams['access_token']]\"\n"
    ));
    let raw = format!("GET /x?access_token={token} HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(refusal_of(&yaml, raw.as_bytes()), None);
}

// === Time claims ===

#[test]
fn expiry_and_not_before_are_checked_with_the_leeway() {
    let yaml = policy(&hmac_config(256, SECRET_256));
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let with = |extra: serde_json::Value| {
        let mut c = claims();
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        sign(Algorithm::HS256, &c, &key)
    };
    assert_eq!(
        reason(&yaml, &with(json!({"exp": now() - 120}))),
        Some(EXPIRED)
    );
    // Within the leeway.
    assert_eq!(reason(&yaml, &with(json!({"exp": now() - 10}))), None);
    assert_eq!(
        reason(&yaml, &with(json!({"nbf": now() + 120}))),
        Some(NOT_YET_VALID)
    );
    assert_eq!(reason(&yaml, &with(json!({"nbf": now() + 10}))), None);
    assert_eq!(reason(&yaml, &with(json!({"exp": "soon"}))), Some(INVALID));
    // Absent claims pass unless mandatory.
    let mut bare = claims();
    bare.as_object_mut().expect("object").remove("exp");
    let bare = sign(Algorithm::HS256, &bare, &key);
    assert_eq!(reason(&yaml, &bare), None);
    let base = hmac_config(256, SECRET_256);
    let mandatory = policy(&format!("{base}    mandatoryExpClaim: true\n"));
    assert_eq!(reason(&mandatory, &bare), Some(CLAIMS));
    let mandatory = policy(&format!("{base}    mandatoryNbfClaim: true\n"));
    assert_eq!(reason(&mandatory, &with(json!({}))), Some(CLAIMS));
    assert_eq!(reason(&mandatory, &with(json!({"nbf": now() - 5}))), None);
}

// === Audience ===

#[test]
fn audiences_are_checked_when_asked() {
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let token = |aud: Option<serde_json::Value>| {
        let mut c = claims();
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        sign(Algorithm::HS256, &c, &key)
    };
    let base = hmac_config(256, SECRET_256);
    // Not asked: any audience.
    let off = policy(&base);
    assert_eq!(reason(&off, &token(Some(json!("elsewhere")))), None);

    let on = policy(&format!(
        "{base}    validateAudClaim: true\n    supportedAudiences: 'orders, billing'\n"
    ));
    assert_eq!(reason(&on, &token(Some(json!("billing")))), None);
    assert_eq!(reason(&on, &token(Some(json!(["x", "orders"])))), None);
    assert_eq!(
        reason(&on, &token(Some(json!("elsewhere")))),
        Some(AUDIENCE)
    );
    assert_eq!(reason(&on, &token(Some(json!(["x", "y"])))), Some(AUDIENCE));
    assert_eq!(reason(&on, &token(Some(json!(7)))), Some(AUDIENCE));
    assert_eq!(reason(&on, &token(None)), None);

    let mandatory = policy(&format!(
        "{base}    validateAudClaim: true\n    mandatoryAudClaim: true\n    supportedAudiences: orders\n"
    ));
    assert_eq!(reason(&mandatory, &token(None)), Some(AUDIENCE));
    assert_eq!(reason(&mandatory, &token(Some(json!("orders")))), None);
}

// === Custom claims and client ID ===

#[test]
fn custom_claims_are_checked_when_asked() {
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let token = |extra: serde_json::Value| {
        let mut c = claims();
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        sign(Algorithm::HS256, &c, &key)
    };
    let base = hmac_config(256, SECRET_256);
    let yaml = policy(&format!(
        "{base}    validateCustomClaim: true\n    mandatoryCustomClaims:\n      - {{key: iss, value: 'https://idp.example'}}\n      - key: roles\n        value: \"#[vars.claimSet.roles contains 'orders']\"\n    nonMandatoryCustomClaims:\n      - {{key: tier, value: \"#[vars.claimSet.tier == 'gold' or vars.claimSet.tier == 'silver']\"}}\n"
    ));
    let good = json!({"iss": "https://idp.example", "roles": ["orders", "x"]});
    assert_eq!(reason(&yaml, &token(good.clone())), None);
    let mut silver = good.clone();
    silver["tier"] = json!("silver");
    assert_eq!(reason(&yaml, &token(silver)), None);
    let mut bronze = good.clone();
    bronze["tier"] = json!("bronze");
    assert_eq!(reason(&yaml, &token(bronze)), Some(CLAIMS));
    assert_eq!(
        reason(&yaml, &token(json!({"iss": "https://idp.example"}))),
        Some(CLAIMS)
    );
    assert_eq!(
        reason(
            &yaml,
            &token(json!({"iss": "https://evil.example", "roles": ["orders"]}))
        ),
        Some(CLAIMS)
    );

    // Without validateCustomClaim the lists are ignored (with a warning).
    let off = policy(&format!(
        "{base}    mandatoryCustomClaims:\n      - {{key: iss, value: 'https://idp.example'}}\n"
    ));
    assert_eq!(reason(&off, &token(json!({}))), None);
}

#[test]
fn the_client_id_must_be_in_the_token_unless_skipped() {
    let key = EncodingKey::from_secret(SECRET_256.as_bytes());
    let mut c = claims();
    c.as_object_mut().expect("object").remove("client_id");
    c["azp"] = json!("app-2");
    let token = sign(Algorithm::HS256, &c, &key);
    let base = hmac_config(256, SECRET_256);
    assert_eq!(reason(&policy(&base), &token), Some(CLIENT_ID));
    let skip = policy(&format!("{base}    skipClientIdValidation: true\n"));
    assert_eq!(reason(&skip, &token), None);
    let azp = policy(&format!(
        "{base}    clientIdExpression: \"#[vars.claimSet.azp]\"\n"
    ));
    assert_eq!(reason(&azp, &token), None);
}

// === Configuration errors ===

#[test]
fn config_errors_name_their_field() {
    let hmac = hmac_config(256, SECRET_256);
    let cases: Vec<(String, &str)> = vec![
        (
            "    signingMethod: none\n".into(),
            "16: spec.config.signingMethod: `none` accepts tokens without a signature, which \
             Ringwall refuses to do; use rsa, hmac or es",
        ),
        (
            "    signingMethod: RS256\n".into(),
            "16: spec.config.signingMethod: unknown signing method `RS256`; expected rsa, hmac \
             or es (the hash size is signingKeyLength: 256, 384 or 512)",
        ),
        (
            "    signingMethod: rsa\n    signingKeyLength: 1024\n".into(),
            "17: spec.config.signingKeyLength: must be 256, 384 or 512, found 1024",
        ),
        (
            "    signingMethod: es\n    signingKeyLength: 512\n".into(),
            "17: spec.config.signingKeyLength: must be 256 or 384 with signingMethod es, found 512",
        ),
        (
            "    signingMethod: hmac\n".into(),
            "15: spec.config.textKey: missing required field `textKey` (the key with \
             jwtKeyOrigin text)",
        ),
        (
            hmac_config(384, SECRET_256),
            "18: spec.config.textKey: an hmac key for signingKeyLength 384 must be at least 48 \
             bytes, found 32",
        ),
        (
            "    textKey: 'not a pem'\n".into(),
            "16: spec.config.textKey: expected an RSA public key in PEM (BEGIN PUBLIC KEY, RSA \
             PUBLIC KEY or CERTIFICATE)",
        ),
        (
            "    textKey: \"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\"\n"
                .into(),
            "16: spec.config.textKey: expected a public key in PEM, found a private key: only \
             the public key belongs here",
        ),
        (
            "    jwtKeyOrigin: custom\n    customKeyExpression: \"#[authentication.properties['k']]\"\n"
                .into(),
            "16: spec.config.jwtKeyOrigin: `custom` (a key from customKeyExpression) is not \
             supported; use text or jwks",
        ),
        (
            "    jwtKeyOrigin: jwks\n".into(),
            "15: spec.config.jwksUrl: missing required field `jwksUrl` (with jwtKeyOrigin jwks)",
        ),
        (
            "    jwtKeyOrigin: jwks\n    jwksUrl: 'https://idp.example/keys, ftp://x/keys'\n"
                .into(),
            "17: spec.config.jwksUrl: `ftp://x/keys` is not an http or https URL",
        ),
        (
            "    jwtKeyOrigin: jwks\n    jwksUrl: https://idp.example/keys\n    jwksServiceTimeToLive: 0\n"
                .into(),
            "18: spec.config.jwksServiceTimeToLive: must be between 1 and 525600, found 0",
        ),
        (
            "    signingMethod: hmac\n    jwtKeyOrigin: jwks\n    jwksUrl: https://idp.example/keys\n"
                .into(),
            "17: spec.config.jwtKeyOrigin: a JWKS publishes public keys: use signingMethod rsa \
             or es with jwtKeyOrigin jwks",
        ),
        (
            format!("{hmac}    jwtOrigin: header\n"),
            "19: spec.config.jwtOrigin: unknown origin `header`; expected \
             httpBearerAuthenticationHeader or customExpression",
        ),
        (
            format!(
                "{hmac}    jwtOrigin: customExpression\n    jwtExpression: \"#[attributes.headers['a'] ++ attributes.headers['b']]\"\n"
            ),
            "20: spec.config.jwtExpression: a jwtExpression must name one attribute",
        ),
        (
            format!("{hmac}    validateAudClaim: true\n"),
            "15: spec.config.supportedAudiences: validateAudClaim needs the accepted audiences, \
             comma-separated",
        ),
        (
            format!("{hmac}    clientIdExpression: \"#[attributes.headers['x']]\"\n"),
            "19: spec.config.clientIdExpression: unsupported client ID expression \
             `#[attributes.headers['x']]`: `attributes.headers['x']` is not a claim: expected \
             vars.claimSet.name; supported: #[vars.claimSet.name] or #[vars.claimSet['name']]",
        ),
        (
            format!("{hmac}    validateCustomClaim: true\n    mandatoryCustomClaims:\n      - {{key: roles}}\n"),
            "21: spec.config.mandatoryCustomClaims[0].value: missing required field `value`",
        ),
        (
            format!("{hmac}    claimsToHeaders: []\n"),
            "19: spec.config.claimsToHeaders: unknown field `claimsToHeaders`; accepted fields: \
             `signingMethod`, `signingKeyLength`, `jwtKeyOrigin`, `textKey`, \
             `customKeyExpression`, `jwksUrl`, `jwksServiceTimeToLive`, \
             `jwksServiceConnectionTimeout`, `jwtOrigin`, `jwtExpression`, \
             `skipClientIdValidation`, `clientIdExpression`, `validateAudClaim`, \
             `mandatoryAudClaim`, `supportedAudiences`, `mandatoryExpClaim`, \
             `mandatoryNbfClaim`, `validateCustomClaim`, `mandatoryCustomClaims`, \
             `nonMandatoryCustomClaims`",
        ),
    ];
    for (config, want) in cases {
        assert_eq!(error_of(&policy(&config)), want, "{config}");
    }
    let bad = format!(
        "{hmac}    validateCustomClaim: true\n    nonMandatoryCustomClaims:\n      - {{key: a, value: \"#[vars.claimSet.a map $]\"}}\n"
    );
    let e = error_of(&policy(&bad));
    assert!(
        e.starts_with(
            "21: spec.config.nonMandatoryCustomClaims[0].value: unsupported claim expression"
        ),
        "{e}"
    );
}

#[test]
fn a_key_of_the_wrong_kind_is_a_load_error() {
    let k = keys();
    let e = error_of(&policy(&pem_config("es", 256, &k.rsa.1)));
    assert_eq!(
        e,
        "18: spec.config.textKey: expected a P-256 public key in PEM (BEGIN PUBLIC KEY or \
         CERTIFICATE) for signingKeyLength 256"
    );
    let e = error_of(&policy(&pem_config("es", 256, &k.p384.1)));
    assert!(e.contains("expected a P-256 public key"), "{e}");
    let e = error_of(&policy(&pem_config("rsa", 256, &k.p256.1)));
    assert!(e.contains("expected an RSA public key"), "{e}");
}

#[test]
fn flex_templates_with_unused_fields_load() {
    // Flex's templates carry every field; those of the origin not chosen are ignored.
    let yaml = policy(
        "    jwtOrigin: httpBearerAuthenticationHeader\n    jwtExpression: \"#[attributes.headers['jwt']]\"\n    signingMethod: rsa\n    signingKeyLength: 256\n    jwtKeyOrigin: jwks\n    textKey: your-(256|384|512)-bit-secret\n    customKeyExpression: \"#[authentication.properties['k']]\"\n    jwksUrl: http://127.0.0.1:9/keys\n    jwksServiceTimeToLive: 60\n    jwksServiceConnectionTimeout: 1000\n    skipClientIdValidation: true\n    clientIdExpression: \"#[vars.claimSet.client_id]\"\n    validateAudClaim: false\n    mandatoryAudClaim: false\n    supportedAudiences: aud.example.com\n    mandatoryExpClaim: false\n    mandatoryNbfClaim: false\n    validateCustomClaim: false\n",
    );
    assert!(compiled(&yaml).is_ok());
}

// === JWKS ===

fn jwk_of(key: &EncodingKey, alg: Algorithm, kid: &str) -> serde_json::Value {
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).expect("json")
}

#[test]
fn a_jwks_gives_the_keys_for_the_algorithm() {
    let k = keys();
    let mut rsa = jwk_of(&k.rsa.0, Algorithm::RS256, "r1");
    // Without `alg`, a key serves every hash of its type.
    rsa.as_object_mut().expect("object").remove("alg");
    let ec = jwk_of(&k.p256.0, Algorithm::ES256, "e1");
    let mut enc = jwk_of(&k.rsa_other, Algorithm::RS256, "enc");
    enc["use"] = json!("enc");
    let mut rs512 = jwk_of(&k.rsa_other, Algorithm::RS512, "r512");
    rs512["alg"] = json!("RS512");
    let mut bad_n = rsa.clone();
    bad_n["kid"] = json!("bad");
    bad_n["n"] = json!("AQ");
    let body = json!({"keys": [rsa, ec, enc, rs512, bad_n, {"kty": "OKP", "crv": "X448", "x": "AA"}, {"kty": "weird"}]})
        .to_string();
    let kids = |alg| {
        jwks::parse_set(&body, alg)
            .expect("parses")
            .into_iter()
            .map(|k| k.kid.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(kids(Algorithm::RS256), ["r1"]);
    // With `alg`, only that one.
    assert_eq!(kids(Algorithm::RS512), ["r1", "r512"]);
    assert_eq!(kids(Algorithm::ES256), ["e1"]);
    assert!(kids(Algorithm::ES384).is_empty());
    assert!(jwks::parse_set("{\"nokeys\": 1}", Algorithm::RS256).is_err());
    assert!(jwks::parse_set("<html>", Algorithm::RS256).is_err());
}

/// A fetch that serves `bodies[current]` and reports each call on a channel.
fn fake_fetch(bodies: std::sync::Arc<arc_swap::ArcSwap<String>>) -> (Fetch, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let fetch: Fetch = Box::new(move |_url| {
        let _ = tx.send(());
        let body = bodies.load_full();
        if body.is_empty() {
            Err("connection refused".into())
        } else {
            Ok(body.as_str().to_owned())
        }
    });
    (fetch, rx)
}

fn jwks_policy(fetch: Fetch) -> JwtValidation {
    let source = Source {
        urls: vec!["http://idp.test/keys".into()],
        alg: Algorithm::ES256,
        ttl: Duration::from_secs(3600),
        label: "PolicyBinding/test".into(),
    };
    JwtValidation {
        alg: Algorithm::ES256,
        keys: Keys::Jwks(Jwks::start(source, fetch)),
        origin: TokenOrigin::Bearer,
        validation: validation(Algorithm::ES256, false, false),
        audience: None,
        custom: Vec::new(),
        client_id: None,
    }
}

/// Polls `cond` until it holds; fails after five seconds.
#[track_caller]
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn jwks_keys_rotate_on_an_unknown_kid_and_the_thread_ends_with_the_policy() {
    let k = keys();
    let set = |keys: &[serde_json::Value]| std::sync::Arc::new(json!({"keys": keys}).to_string());
    let a = jwk_of(&k.p256.0, Algorithm::ES256, "a");
    let b = jwk_of(&k.p256_other, Algorithm::ES256, "b");
    let bodies = std::sync::Arc::new(arc_swap::ArcSwap::new(std::sync::Arc::new(String::new())));
    let (fetch, fetched) = fake_fetch(bodies.clone());
    let policy = jwks_policy(fetch);
    let c = claims();
    let token_a = sign_kid(Algorithm::ES256, "a", &c, &k.p256.0);
    let token_b = sign_kid(Algorithm::ES256, "b", &c, &k.p256_other);
    let Keys::Jwks(jwks) = &policy.keys else {
        unreachable!()
    };

    // The first fetch fails: nothing to verify with yet.
    fetched
        .recv_timeout(Duration::from_secs(5))
        .expect("first fetch");
    assert_eq!(policy.verify(&token_a), Err(NO_KEYS));

    // The next attempt (a retry after 1 s) gets key A.
    bodies.store(set(std::slice::from_ref(&a)));
    eventually("key A loaded", || jwks.keys().loaded);
    assert_eq!(policy.verify(&token_a), Ok(()));

    // B replaces A: a token naming B asks for an early fetch and is refused meanwhile.
    bodies.store(set(&[b]));
    while fetched.try_recv().is_ok() {}
    assert_eq!(policy.verify(&token_b), Err(INVALID));
    fetched
        .recv_timeout(Duration::from_secs(5))
        .expect("early fetch");
    eventually("key B loaded", || policy.verify(&token_b).is_ok());
    assert_eq!(policy.verify(&token_a), Err(INVALID));
    // Early fetches are rate-limited: more unknown kids within the gap fetch nothing.
    for _ in 0..20 {
        assert_eq!(policy.verify(&token_a), Err(INVALID));
    }
    assert!(fetched.recv_timeout(Duration::from_millis(200)).is_err());

    // Tokens without a kid are tried against every key.
    let no_kid = sign(Algorithm::ES256, &c, &k.p256_other);
    assert_eq!(policy.verify(&no_kid), Ok(()));

    // Dropping the policy ends the thread, which drops the fetch and its sender.
    drop(policy);
    loop {
        match fetched.recv_timeout(Duration::from_secs(5)) {
            Ok(()) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the JWKS thread outlived its policy"),
        }
    }
}

#[test]
fn jwks_failures_keep_the_last_good_keys() {
    let k = keys();
    let a = jwk_of(&k.p256.0, Algorithm::ES256, "a");
    let body = std::sync::Arc::new(json!({"keys": [a]}).to_string());
    let bodies = std::sync::Arc::new(arc_swap::ArcSwap::new(body));
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let (mut inner, fetched) = fake_fetch(bodies.clone());
    let counted = calls.clone();
    let fetch: Fetch = Box::new(move |url| {
        counted.fetch_add(1, Ordering::SeqCst);
        inner(url)
    });
    let policy = jwks_policy(fetch);
    let Keys::Jwks(jwks) = &policy.keys else {
        unreachable!()
    };
    eventually("key A loaded", || jwks.keys().loaded);
    // The server goes away; an unknown kid asks for a fetch, which fails: A still verifies.
    bodies.store(std::sync::Arc::new(String::new()));
    let token_x = sign_kid(Algorithm::ES256, "x", &claims(), &k.p256_other);
    assert_eq!(policy.verify(&token_x), Err(INVALID));
    eventually("the failing fetch", || calls.load(Ordering::SeqCst) >= 2);
    let token_a = sign_kid(Algorithm::ES256, "a", &claims(), &k.p256.0);
    assert_eq!(policy.verify(&token_a), Ok(()));
    drop(fetched);
}

#[test]
fn the_http_fetch_reads_a_jwks_and_refuses_errors() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        for (status, body) in [("200 OK", "{\"keys\": []}"), ("500 Oops", "no")] {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read");
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(reply.as_bytes()).expect("write");
        }
    });
    let mut fetch = jwks::http_fetch(Duration::from_secs(5));
    let url = format!("http://{addr}/keys");
    assert_eq!(fetch(&url).as_deref(), Ok("{\"keys\": []}"));
    assert!(fetch(&url).is_err());
    server.join().expect("server");
}
