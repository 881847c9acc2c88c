//! The bench's policy sets: `none`, and `typical`, three policies an API gateway commonly
//! runs on every request, configured as alike as each peer allows:
//!
//! - a rate limit per client address (Envoy: one token bucket for its one worker), high enough
//!   ([`RATE_PER_SECOND`]) never to refuse during the bench, exposing its state in response
//!   headers so that the bench can see that the limiter ran (Ringwall's `exposeHeaders`,
//!   Envoy's `x-ratelimit-*`, HAProxy's from its stick table, nginx's `$limit_req_status`);
//! - header injection: [`INBOUND_HEADER`] added toward the upstream, [`OUTBOUND_HEADER`]
//!   toward the client;
//! - JWT validation: an HS256 token in `Authorization: Bearer`, its signature and `exp`
//!   checked. nginx OSS has no JWT module: it runs [`NJS_VERIFIER`] (njs, Debian's
//!   `libnginx-mod-http-js`) when that module is installed, and skips JWT (said in the tables
//!   and the JSON) when it is not.
//!
//! [`Jwt`] makes the tokens for a run: the one the load sends, and the expired and forged
//! ones that every peer validating JWTs must refuse before it is measured.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Requests per second per client the limiters allow: an order of magnitude over what one
/// core can proxy, so that the limit is computed on every request and never reached.
pub const RATE_PER_SECOND: u64 = 10_000_000;
/// The request header each proxy adds on the way upstream, and its value.
pub const INBOUND_HEADER: (&str, &str) = ("x-bench-inbound", "ringwall-bench");
/// The response header each proxy adds on the way to the client, and its value.
pub const OUTBOUND_HEADER: (&str, &str) = ("x-bench-outbound", "ringwall-bench");
/// The HMAC key of the tokens: 32 bytes, as HS256 wants at least.
pub const JWT_SECRET: &str = "ringwall-bench-hs256-secret-0123";
/// Where Debian's njs module lives: with it, nginx validates JWTs too.
pub const NJS_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_js_module.so";

/// Which policies the proxies run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policies {
    None,
    Typical,
}

impl Policies {
    pub fn parse(name: &str) -> Result<Policies> {
        Ok(match name {
            "none" => Policies::None,
            "typical" => Policies::Typical,
            _ => bail!("unknown policy set `{name}` (known: none typical)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Policies::None => "none",
            Policies::Typical => "typical",
        }
    }
}

/// What a peer enforces in a policy set, for the tables and the JSON.
pub fn applied(policies: Policies, jwt: bool) -> &'static [&'static str] {
    match (policies, jwt) {
        (Policies::None, _) => &[],
        (Policies::Typical, true) => &["rate-limit", "header-injection", "jwt"],
        (Policies::Typical, false) => &["rate-limit", "header-injection"],
    }
}

// === tokens ===

/// The tokens of one run.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// Valid for a day: what the load sends.
    pub valid: String,
    /// Signed with the key, expired an hour ago (past every peer's clock-skew leeway).
    pub expired: String,
    /// The valid token's claims signed with another key.
    pub forged: String,
}

impl Jwt {
    pub fn new() -> Jwt {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Jwt::at(now)
    }

    fn at(now: u64) -> Jwt {
        let claims = |exp: u64| format!(r#"{{"sub":"bench","iat":{now},"exp":{exp}}}"#);
        Jwt {
            valid: hs256(JWT_SECRET.as_bytes(), &claims(now + 86_400)),
            expired: hs256(JWT_SECRET.as_bytes(), &claims(now.saturating_sub(3_600))),
            forged: hs256(b"not-the-bench-secret-not-the-key", &claims(now + 86_400)),
        }
    }
}

/// A compact JWS of `claims` (JSON), HS256 with `key`.
pub fn hs256(key: &[u8], claims: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims);
    let signed = format!("{header}.{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let signature = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()));
    format!("{signed}.{signature}")
}

// === each peer's configuration ===

/// nginx, in the `http` block: the limiter's zone and, with `jwt`, the njs verifier.
pub fn nginx_http(work: &Path, jwt: bool) -> String {
    let mut out =
        format!("  limit_req_zone $binary_remote_addr zone=bench:1m rate={RATE_PER_SECOND}r/s;\n");
    if jwt {
        let _ = write!(
            out,
            "  js_import bench_jwt from {}/jwt.js;\n  js_set $bench_jwt_ok bench_jwt.verify;\n",
            work.display()
        );
    }
    out
}

/// nginx, in the `server` block. nginx's limiter counts per millisecond, so without a burst
/// two requests in the same millisecond would be refused whatever the rate: the burst lets
/// through what one millisecond can bring. The JWT check runs in the rewrite phase, before
/// the limiter (nginx's phases are fixed).
pub fn nginx_server(jwt: bool) -> String {
    let (outbound, outbound_value) = OUTBOUND_HEADER;
    let mut out = format!(
        "    limit_req zone=bench burst=100000 nodelay;
    limit_req_status 429;
    add_header x-ratelimit-status $limit_req_status;
    add_header {outbound} {outbound_value};
"
    );
    if jwt {
        out.push_str("    if ($bench_jwt_ok != 1) { return 401; }\n");
    }
    out
}

/// nginx, in the proxying `location`: a `proxy_set_header` there replaces every one the
/// server block would set, so the injected header goes beside the location's own.
pub fn nginx_location() -> String {
    let (inbound, inbound_value) = INBOUND_HEADER;
    format!("      proxy_set_header {inbound} {inbound_value};\n")
}

/// The njs verifier: the Bearer token's three parts, `alg` HS256, the HMAC-SHA256 of the
/// first two against the third, and an `exp` that is a number in the future. Anything
/// malformed is a refusal.
pub const NJS_VERIFIER: &str = r#"// Written by `cargo xtask bench`: HS256 JWT validation for nginx (njs).
var crypto = require('crypto');
var KEY = '@SECRET@';
var BEARER = /^Bearer ([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/;

function json(part) {
    return JSON.parse(Buffer.from(part, 'base64url').toString());
}

function verify(r) {
    try {
        var m = BEARER.exec(r.headersIn.Authorization || '');
        if (!m || json(m[1]).alg !== 'HS256') {
            return '0';
        }
        var mac = crypto.createHmac('sha256', KEY).update(m[1] + '.' + m[2]).digest('base64url');
        if (mac !== m[3]) {
            return '0';
        }
        var exp = json(m[2]).exp;
        return typeof exp === 'number' && exp > Date.now() / 1000 ? '1' : '0';
    } catch (e) {
        return '0';
    }
}

export default { verify };
"#;

pub fn njs_script() -> String {
    NJS_VERIFIER.replace("@SECRET@", JWT_SECRET)
}

/// HAProxy, in the frontend: the stick table counts each source's requests over a second;
/// the token's `alg` must be HS256, its signature verify (`jwt_verify` returns 1 only then;
/// its other values are errors) and its `exp` lie ahead; a token without `exp` fails the last
/// check, since the comparison of a missing variable is false.
pub fn haproxy_frontend() -> String {
    let (inbound, inbound_value) = INBOUND_HEADER;
    let (outbound, outbound_value) = OUTBOUND_HEADER;
    format!(
        "  stick-table type ip size 100k expire 30s store http_req_rate(1s)
  http-request track-sc0 src
  http-request set-var(txn.rate) sc_http_req_rate(0)
  http-request deny deny_status 429 if {{ var(txn.rate) -m int gt {RATE_PER_SECOND} }}
  http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_header_query('$.alg') -m str HS256 }}
  http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_verify(\"HS256\",\"{JWT_SECRET}\") -m int 1 }}
  http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('$.exp','int')
  http-request set-var(txn.now) date
  http-request deny deny_status 401 unless {{ var(txn.exp),sub(txn.now) -m int gt 0 }}
  http-request set-header {inbound} {inbound_value}
  http-response set-header {outbound} {outbound_value}
  http-response set-header x-ratelimit-limit {RATE_PER_SECOND}
  http-response set-header x-ratelimit-remaining %[int({RATE_PER_SECOND}),sub(txn.rate)]
"
    )
}

/// Ringwall: the three Flex policies bound to the ApiInstance `target`, the limit in this
/// process (no `sharedStorage`), in the order a gateway would run them.
pub fn ringwall_bindings(target: &str) -> String {
    let (inbound, inbound_value) = INBOUND_HEADER;
    let (outbound, outbound_value) = OUTBOUND_HEADER;
    let binding = |name: &str, policy: &str, order: u32, config: &str| {
        format!(
            "---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: {target}-{name}
spec:
  targetRef:
    name: {target}
  policyRef:
    name: {policy}
  order: {order}
  config:
{config}"
        )
    };
    [
        binding(
            "rate-limit",
            "rate-limiting-flex",
            1,
            &format!(
                "    rateLimits:
      - maximumRequests: {RATE_PER_SECOND}
        timePeriodInMilliseconds: 1000
    keySelector: \"#[attributes.remoteAddress]\"
    exposeHeaders: true
    clusterizable: false
"
            ),
        ),
        binding(
            "jwt",
            "jwt-validation-flex",
            2,
            &format!(
                "    signingMethod: hmac
    signingKeyLength: 256
    jwtKeyOrigin: text
    textKey: '{JWT_SECRET}'
    jwtOrigin: httpBearerAuthenticationHeader
    mandatoryExpClaim: true
    skipClientIdValidation: true
"
            ),
        ),
        binding(
            "headers",
            "header-injection-flex",
            3,
            &format!(
                "    inboundHeaders:
      - key: {inbound}
        value: {inbound_value}
    outboundHeaders:
      - key: {outbound}
        value: {outbound_value}
"
            ),
        ),
    ]
    .concat()
}

/// Envoy, in the HTTP connection manager's `route_config` (at its indentation).
pub fn envoy_route_headers(indent: &str) -> String {
    let (inbound, inbound_value) = INBOUND_HEADER;
    let (outbound, outbound_value) = OUTBOUND_HEADER;
    format!(
        "{indent}request_headers_to_add:
{indent}- header: {{ key: {inbound}, value: {inbound_value} }}
{indent}  append_action: OVERWRITE_IF_EXISTS_OR_ADD
{indent}response_headers_to_add:
{indent}- header: {{ key: {outbound}, value: {outbound_value} }}
{indent}  append_action: OVERWRITE_IF_EXISTS_OR_ADD
"
    )
}

/// Envoy, the HTTP filters before the router (at the filters' indentation): `jwt_authn` with
/// the key as an inline JWKS (`oct`), which checks the signature and `exp` (Envoy's default),
/// then `local_ratelimit` on every request.
pub fn envoy_filters(indent: &str) -> String {
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{}"}}]}}"#,
        URL_SAFE_NO_PAD.encode(JWT_SECRET)
    );
    format!(
        "{indent}- name: envoy.filters.http.jwt_authn
{indent}  typed_config:
{indent}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
{indent}    providers:
{indent}      bench:
{indent}        local_jwks: {{ inline_string: '{jwks}' }}
{indent}    rules:
{indent}    - match: {{ prefix: / }}
{indent}      requires: {{ provider_name: bench }}
{indent}- name: envoy.filters.http.local_ratelimit
{indent}  typed_config:
{indent}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
{indent}    stat_prefix: bench_rate_limit
{indent}    token_bucket: {{ max_tokens: {RATE_PER_SECOND}, tokens_per_fill: {RATE_PER_SECOND}, fill_interval: 1s }}
{indent}    filter_enabled:
{indent}      runtime_key: bench_rate_limit_enabled
{indent}      default_value: {{ numerator: 100, denominator: HUNDRED }}
{indent}    filter_enforced:
{indent}      runtime_key: bench_rate_limit_enforced
{indent}      default_value: {{ numerator: 100, denominator: HUNDRED }}
{indent}    enable_x_ratelimit_headers: DRAFT_VERSION_03
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> String {
        String::from_utf8(URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn hs256_signs_header_and_claims_as_a_known_answer() {
        // Computed independently (Python's hmac and base64) for this key and these claims.
        assert_eq!(
            hs256(b"key-of-at-least-thirty-two-bytes", r#"{"exp":1}"#),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjF9.\
             IG7c-of1EZufLsD_qlLAU6RpsI7oCJwuqEM7QDoj5NE"
        );
    }

    #[test]
    fn the_tokens_differ_in_expiry_and_key() {
        let jwt = Jwt::at(1_700_000_000);
        let claims = |token: &str| decode(token.split('.').nth(1).unwrap());
        assert!(claims(&jwt.valid).contains(r#""exp":1700086400"#));
        assert!(claims(&jwt.expired).contains(r#""exp":1699996400"#));
        assert_eq!(claims(&jwt.forged), claims(&jwt.valid));
        assert_ne!(jwt.forged, jwt.valid);
        assert_eq!(JWT_SECRET.len(), 32);
    }

    #[test]
    fn every_peer_configures_the_three_policies() {
        let nginx = format!(
            "{}{}{}",
            nginx_http(Path::new("/w"), true),
            nginx_server(true),
            nginx_location()
        );
        for needed in [
            "limit_req_zone $binary_remote_addr zone=bench:1m rate=10000000r/s;",
            "limit_req zone=bench burst=100000 nodelay;",
            "proxy_set_header x-bench-inbound ringwall-bench;",
            "add_header x-bench-outbound ringwall-bench;",
            "js_import bench_jwt from /w/jwt.js;",
            "if ($bench_jwt_ok != 1) { return 401; }",
        ] {
            assert!(nginx.contains(needed), "nginx lacks {needed}:\n{nginx}");
        }
        let without_jwt = nginx_server(false) + &nginx_http(Path::new("/w"), false);
        assert!(!without_jwt.contains("jwt") && without_jwt.contains("limit_req "));

        let haproxy = haproxy_frontend();
        for needed in [
            "http-request track-sc0 src",
            "deny_status 429 if { var(txn.rate) -m int gt 10000000 }",
            "jwt_verify(\"HS256\",\"ringwall-bench-hs256-secret-0123\") -m int 1",
            "jwt_payload_query('$.exp','int')",
            "http-request set-header x-bench-inbound ringwall-bench",
            "http-response set-header x-bench-outbound ringwall-bench",
        ] {
            assert!(haproxy.contains(needed), "haproxy lacks {needed}");
        }

        let ringwall = ringwall_bindings("bench");
        for needed in [
            "name: rate-limiting-flex\n",
            "name: jwt-validation-flex\n",
            "name: header-injection-flex\n",
            "      - maximumRequests: 10000000\n",
            "    clusterizable: false\n",
            "    mandatoryExpClaim: true\n",
            "    textKey: 'ringwall-bench-hs256-secret-0123'\n",
            "      - key: x-bench-inbound\n",
            "      - key: x-bench-outbound\n",
        ] {
            assert!(ringwall.contains(needed), "ringwall lacks {needed}");
        }
        assert_eq!(ringwall.matches("kind: PolicyBinding").count(), 3);

        let envoy = envoy_filters("") + &envoy_route_headers("");
        for needed in [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.local_ratelimit",
            "requires: { provider_name: bench }",
            r#""kty":"oct""#,
            "key: x-bench-inbound",
            "key: x-bench-outbound",
        ] {
            assert!(envoy.contains(needed), "envoy lacks {needed}");
        }
        // The JWKS carries the secret, base64url-encoded.
        assert!(envoy.contains(&URL_SAFE_NO_PAD.encode(JWT_SECRET)));
    }

    #[test]
    fn the_njs_verifier_carries_the_key_and_checks_alg_signature_and_exp() {
        let script = njs_script();
        assert!(script.contains("var KEY = 'ringwall-bench-hs256-secret-0123';"));
        assert!(!script.contains("@SECRET@"));
        for needed in [
            "alg !== 'HS256'",
            "createHmac('sha256', KEY)",
            "exp > Date.now()",
        ] {
            assert!(script.contains(needed), "{needed}");
        }
        assert_eq!(script.matches('{').count(), script.matches('}').count());
    }

    #[test]
    fn policy_sets_parse_and_say_what_they_apply() {
        assert_eq!(Policies::parse("typical").unwrap(), Policies::Typical);
        assert_eq!(Policies::parse("none").unwrap().name(), "none");
        assert!(Policies::parse("all").is_err());
        assert!(applied(Policies::None, true).is_empty());
        assert!(applied(Policies::Typical, true).contains(&"jwt"));
        assert!(!applied(Policies::Typical, false).contains(&"jwt"));
    }
}
