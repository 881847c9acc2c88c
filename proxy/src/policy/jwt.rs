//! `jwt-validation-flex`: a request passes with a JSON Web Token whose signature verifies
//! against the configured key and whose claims pass the configured checks; otherwise 401.
//!
//! The token is the `Authorization: Bearer` credential, or what `jwtExpression` reads. Its
//! `alg` must be exactly the configured one (`signingMethod` and `signingKeyLength`: RS256/384/
//! 512, HS256/384/512, ES256/384): `none` never verifies, and an RSA-configured policy does not
//! take a token "signed" with HMAC over its public key. The key is `textKey` (the HMAC secret,
//! or an RSA or EC public key in PEM) or comes from `jwksUrl` (see [`jwks`]). `exp` and `nbf`
//! are checked when present (required with `mandatoryExpClaim` / `mandatoryNbfClaim`) with
//! [`LEEWAY_SECONDS`] of clock skew allowed; `aud` with `validateAudClaim`; other claims with
//! `validateCustomClaim` (see [`claims`]).
//!
//! A refusal is 401 with a short, fixed reason and `WWW-Authenticate: Bearer` (with
//! `error="invalid_token"` when a token was given, RFC 6750). Verifying decodes the token's
//! base64 and JSON, which allocates: only for requests that carry a token.

mod claims;
mod jwks;

use std::sync::{Arc, Once};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ringwall_config::{item, Fields, Node, Scope};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};

use self::claims::{Check, ClaimPath};
use self::jwks::Jwks;
use super::expr::{Expr, Value as ExprValue};
use super::{config_fields, expression, Policy, RequestCx, Verdict};

/// Clock skew allowed on `exp` and `nbf`: a token is taken up to 30 s after it expires and
/// from 30 s before it becomes valid, so that the gateway's and the issuer's clocks need not
/// agree to the second.
const LEEWAY_SECONDS: u64 = 30;

const ACCEPTED: &[&str] = &[
    "signingMethod",
    "signingKeyLength",
    "jwtKeyOrigin",
    "textKey",
    "customKeyExpression",
    "jwksUrl",
    "jwksServiceTimeToLive",
    "jwksServiceConnectionTimeout",
    "jwtOrigin",
    "jwtExpression",
    "skipClientIdValidation",
    "clientIdExpression",
    "validateAudClaim",
    "mandatoryAudClaim",
    "supportedAudiences",
    "mandatoryExpClaim",
    "mandatoryNbfClaim",
    "validateCustomClaim",
    "mandatoryCustomClaims",
    "nonMandatoryCustomClaims",
];

/// Flex's defaults.
const DEFAULT_JWT_EXPRESSION: &str = "#[attributes.headers['jwt']]";
const DEFAULT_CLIENT_ID_EXPRESSION: &str = "#[vars.claimSet.client_id]";
const DEFAULT_TTL_MINUTES: i64 = 60;
const DEFAULT_CONNECTION_TIMEOUT_MS: i64 = 10_000;

// The reasons a request is refused: fixed text, nothing from the token or the key.
const MISSING: &str = "missing token";
const INVALID: &str = "invalid token";
const EXPIRED: &str = "token expired";
const NOT_YET_VALID: &str = "token not yet valid";
const AUDIENCE: &str = "audience not accepted";
const CLAIMS: &str = "claim check failed";
const CLIENT_ID: &str = "client id missing";
const NO_KEYS: &str = "signing keys unavailable";

struct JwtValidation {
    alg: Algorithm,
    keys: Keys,
    origin: TokenOrigin,
    /// `exp`/`nbf` checks, leeway and the one accepted algorithm, for the crate's `decode`.
    validation: Validation,
    audience: Option<Audience>,
    custom: Vec<CustomClaim>,
    /// `None` with `skipClientIdValidation`.
    client_id: Option<ClaimPath>,
}

enum Keys {
    Text(DecodingKey),
    Jwks(Jwks),
}

enum TokenOrigin {
    Bearer,
    Expression(Expr),
}

struct Audience {
    mandatory: bool,
    accepted: Vec<String>,
}

struct CustomClaim {
    key: String,
    mandatory: bool,
    check: Check,
}

// === Building ===

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    use_rust_crypto();
    let fields = config_fields(spec, scope, ACCEPTED)?;
    let mut read = Reader {
        fields: &fields,
        scope,
        ok: true,
    };
    let alg = read.algorithm();
    let origin = read.origin();
    let mandatory_exp = read.flag("mandatoryExpClaim");
    let mandatory_nbf = read.flag("mandatoryNbfClaim");
    let audience = read.audience();
    let custom = read.custom_claims();
    let client_id = read.client_id();
    let key_origin = read.key_origin(alg);
    let parts = (|| Some((alg?, origin?, audience?, custom?, client_id?, key_origin?)))();
    let (Some((alg, origin, audience, custom, client_id, key_origin)), true) = (parts, read.ok)
    else {
        // Every refusal names its field; this only guards against a policy left out silently.
        if read.ok {
            scope.error(spec.line, &spec.config_path, "invalid configuration");
        }
        return None;
    };
    let keys = match key_origin {
        KeyOrigin::Text(key) => Keys::Text(key),
        KeyOrigin::Jwks { urls, ttl, timeout } => {
            let source = jwks::Source {
                urls,
                alg,
                ttl,
                label: spec.resource.clone(),
            };
            Keys::Jwks(Jwks::start(source, jwks::http_fetch(timeout)))
        }
    };
    Some(Arc::new(JwtValidation {
        alg,
        keys,
        origin,
        validation: validation(alg, mandatory_exp, mandatory_nbf),
        audience,
        custom,
        client_id,
    }))
}

/// What the crate's `decode` checks besides the signature: `alg`, and `exp` and `nbf` when
/// present (or always, when mandatory) with the leeway. `aud` is checked afterwards, with
/// Flex's optional/mandatory semantics.
fn validation(alg: Algorithm, mandatory_exp: bool, mandatory_nbf: bool) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    let required: Vec<&str> = [("exp", mandatory_exp), ("nbf", mandatory_nbf)]
        .into_iter()
        .filter_map(|(claim, on)| on.then_some(claim))
        .collect();
    validation.set_required_spec_claims(&required);
    validation
}

/// jsonwebtoken verifies through the process's crypto provider; ours is RustCrypto's, set
/// explicitly so that another crate enabling a second backend cannot leave it undecided.
fn use_rust_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let provider = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(provider);
    });
}

enum KeyOrigin {
    Text(DecodingKey),
    Jwks {
        urls: Vec<String>,
        ttl: Duration,
        timeout: Duration,
    },
}

/// Reads the fields, recording every error before giving up.
struct Reader<'f, 's, 'd> {
    fields: &'f Fields<'f>,
    scope: &'s mut Scope<'d>,
    ok: bool,
}

impl<'f> Reader<'f, '_, '_> {
    fn node(&self, key: &str) -> Option<&'f Node> {
        self.fields.get(key)
    }

    fn path(&self, key: &str) -> String {
        self.fields.path_of(key)
    }

    fn error(&mut self, line: usize, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.scope.error(line, &path, message);
        self.ok = false;
    }

    fn flag(&mut self, key: &str) -> bool {
        let Some(node) = self.node(key) else {
            return false;
        };
        let path = self.path(key);
        let value = self.scope.bool(node, &path);
        self.ok &= value.is_some();
        value.unwrap_or(false)
    }

    /// `Some(None)` when absent, `None` when not a string.
    fn string(&mut self, key: &str) -> Option<Option<&'f str>> {
        let Some(node) = self.node(key) else {
            return Some(None);
        };
        let path = self.path(key);
        let value = self.scope.str(node, &path);
        self.ok &= value.is_some();
        value.map(Some)
    }

    fn int_or(&mut self, key: &str, default: i64, range: std::ops::RangeInclusive<i64>) -> i64 {
        let Some(node) = self.node(key) else {
            return default;
        };
        let path = self.path(key);
        let value = self.scope.int_in(node, &path, range);
        self.ok &= value.is_some();
        value.unwrap_or(default)
    }

    /// `signingMethod` (default `rsa`) and `signingKeyLength` (default 256).
    fn algorithm(&mut self) -> Option<Algorithm> {
        let method = self.string("signingMethod")?.unwrap_or("rsa");
        let length = self.int_or("signingKeyLength", 256, i64::MIN..=i64::MAX);
        let line = |r: &Self, key: &str| r.node(key).map_or(r.fields.line, |n| n.line);
        let family = match method {
            "rsa" | "hmac" | "es" => method,
            "none" => {
                let message = "`none` accepts tokens without a signature, which Ringwall \
                               refuses to do; use rsa, hmac or es";
                self.error(line(self, "signingMethod"), "signingMethod", message);
                return None;
            }
            other => {
                let message = format!(
                    "unknown signing method `{other}`; expected rsa, hmac or es (the hash \
                     size is signingKeyLength: 256, 384 or 512)"
                );
                self.error(line(self, "signingMethod"), "signingMethod", message);
                return None;
            }
        };
        let alg = match (family, length) {
            ("rsa", 256) => Algorithm::RS256,
            ("rsa", 384) => Algorithm::RS384,
            ("rsa", 512) => Algorithm::RS512,
            ("hmac", 256) => Algorithm::HS256,
            ("hmac", 384) => Algorithm::HS384,
            ("hmac", 512) => Algorithm::HS512,
            ("es", 256) => Algorithm::ES256,
            ("es", 384) => Algorithm::ES384,
            ("es", _) => {
                let message = format!("must be 256 or 384 with signingMethod es, found {length}");
                self.error(line(self, "signingKeyLength"), "signingKeyLength", message);
                return None;
            }
            _ => {
                let message = format!("must be 256, 384 or 512, found {length}");
                self.error(line(self, "signingKeyLength"), "signingKeyLength", message);
                return None;
            }
        };
        Some(alg)
    }

    /// `jwtOrigin` (default the bearer header) and `jwtExpression`.
    fn origin(&mut self) -> Option<TokenOrigin> {
        match self.string("jwtOrigin")? {
            None | Some("httpBearerAuthenticationHeader") => Some(TokenOrigin::Bearer),
            Some("customExpression") => {
                let Some(node) = self.node("jwtExpression") else {
                    return Expr::parse(DEFAULT_JWT_EXPRESSION)
                        .ok()
                        .map(TokenOrigin::Expression);
                };
                let path = self.path("jwtExpression");
                let Some(e) = expression(node, &path, self.scope) else {
                    self.ok = false;
                    return None;
                };
                if !e.is_single() || e.reads_response() {
                    let message = "a jwtExpression must name one attribute";
                    self.error(node.line, "jwtExpression", message);
                    return None;
                }
                Some(TokenOrigin::Expression(e))
            }
            Some(other) => {
                let line = self.node("jwtOrigin").map_or(0, |n| n.line);
                let message = format!(
                    "unknown origin `{other}`; expected httpBearerAuthenticationHeader or \
                     customExpression"
                );
                self.error(line, "jwtOrigin", message);
                None
            }
        }
    }

    /// `validateAudClaim`, `mandatoryAudClaim` and `supportedAudiences` (comma-separated).
    fn audience(&mut self) -> Option<Option<Audience>> {
        let validate = self.flag("validateAudClaim");
        let mandatory = self.flag("mandatoryAudClaim");
        let listed = self.string("supportedAudiences")?;
        if !validate {
            if mandatory {
                let line = self.node("mandatoryAudClaim").map_or(0, |n| n.line);
                let path = self.path("mandatoryAudClaim");
                let message = "has no effect unless validateAudClaim is true";
                self.scope.warn(line, &path, message);
            }
            return Some(None);
        }
        let accepted: Vec<String> = listed
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if accepted.is_empty() {
            let line = self
                .node("supportedAudiences")
                .map_or(self.fields.line, |n| n.line);
            let message = "validateAudClaim needs the accepted audiences, comma-separated";
            self.error(line, "supportedAudiences", message);
            return None;
        }
        Some(Some(Audience {
            mandatory,
            accepted,
        }))
    }

    /// `validateCustomClaim`, `mandatoryCustomClaims` and `nonMandatoryCustomClaims`.
    fn custom_claims(&mut self) -> Option<Vec<CustomClaim>> {
        let validate = self.flag("validateCustomClaim");
        let mut out = Vec::new();
        for (key, mandatory) in [
            ("mandatoryCustomClaims", true),
            ("nonMandatoryCustomClaims", false),
        ] {
            let Some(node) = self.node(key) else {
                continue;
            };
            let path = self.path(key);
            let Some(items) = self.scope.seq(node, &path) else {
                self.ok = false;
                continue;
            };
            if !validate && !items.is_empty() {
                let message = "ignored unless validateCustomClaim is true";
                self.scope.warn(node.line, &path, message);
                continue;
            }
            for (i, entry) in items.iter().enumerate() {
                match custom_claim(entry, &item(&path, i), mandatory, self.scope) {
                    Some(c) => out.push(c),
                    None => self.ok = false,
                }
            }
        }
        Some(out)
    }

    /// `clientIdExpression`, unless `skipClientIdValidation`.
    fn client_id(&mut self) -> Option<Option<ClaimPath>> {
        let skip = self.flag("skipClientIdValidation");
        let text = self.string("clientIdExpression")?;
        if skip {
            return Some(None);
        }
        match claims::client_id_path(text.unwrap_or(DEFAULT_CLIENT_ID_EXPRESSION)) {
            Ok(path) => Some(Some(path)),
            Err(message) => {
                let line = self.node("clientIdExpression").map_or(0, |n| n.line);
                self.error(line, "clientIdExpression", message);
                None
            }
        }
    }

    /// `jwtKeyOrigin` (default `text`) with `textKey`, or `jwks` with `jwksUrl`,
    /// `jwksServiceTimeToLive` (minutes) and `jwksServiceConnectionTimeout` (milliseconds).
    /// The fields of the origin not chosen are type-checked and otherwise ignored, as Flex's
    /// templates carry them all.
    fn key_origin(&mut self, alg: Option<Algorithm>) -> Option<KeyOrigin> {
        let origin = self.string("jwtKeyOrigin")?.unwrap_or("text");
        let text_key = self.string("textKey")?;
        self.string("customKeyExpression")?;
        let urls = self.string("jwksUrl")?;
        let ttl = self.int_or("jwksServiceTimeToLive", DEFAULT_TTL_MINUTES, 1..=525_600);
        let timeout = self.int_or(
            "jwksServiceConnectionTimeout",
            DEFAULT_CONNECTION_TIMEOUT_MS,
            1..=600_000,
        );
        let line_of = |r: &Self, key: &str| r.node(key).map_or(r.fields.line, |n| n.line);
        match origin {
            "text" => {
                let Some(text) = text_key else {
                    let message =
                        "missing required field `textKey` (the key with jwtKeyOrigin text)";
                    self.error(self.fields.line, "textKey", message);
                    return None;
                };
                let alg = alg?;
                match text_key_of(text, alg) {
                    Ok(key) => Some(KeyOrigin::Text(key)),
                    Err(message) => {
                        self.error(line_of(self, "textKey"), "textKey", message);
                        None
                    }
                }
            }
            "jwks" => {
                let line = line_of(self, "jwksUrl");
                let Some(urls) = urls else {
                    let message = "missing required field `jwksUrl` (with jwtKeyOrigin jwks)";
                    self.error(line, "jwksUrl", message);
                    return None;
                };
                let urls = match jwks_urls(urls) {
                    Ok(urls) => urls,
                    Err(message) => {
                        self.error(line, "jwksUrl", message);
                        return None;
                    }
                };
                if alg.is_some_and(|a| {
                    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
                }) {
                    let message = "a JWKS publishes public keys: use signingMethod rsa or es \
                                   with jwtKeyOrigin jwks";
                    self.error(line_of(self, "jwtKeyOrigin"), "jwtKeyOrigin", message);
                    return None;
                }
                Some(KeyOrigin::Jwks {
                    urls,
                    ttl: Duration::from_secs(60 * ttl.unsigned_abs()),
                    timeout: Duration::from_millis(timeout.unsigned_abs()),
                })
            }
            other => {
                let message = if other == "custom" {
                    "`custom` (a key from customKeyExpression) is not supported; use text or \
                     jwks"
                        .to_owned()
                } else {
                    format!("unknown key origin `{other}`; expected text or jwks")
                };
                self.error(line_of(self, "jwtKeyOrigin"), "jwtKeyOrigin", message);
                None
            }
        }
    }
}

/// One `{key, value}` custom claim entry.
fn custom_claim(
    node: &Node,
    path: &str,
    mandatory: bool,
    scope: &mut Scope<'_>,
) -> Option<CustomClaim> {
    let fields = scope.map(node, path, &["key", "value"])?;
    let key = scope
        .require(&fields, "key")
        .and_then(|n| scope.str(n, &fields.path_of("key")))
        .map(str::to_owned);
    let check = scope.require(&fields, "value").and_then(|n| {
        let path = fields.path_of("value");
        // YAML may give a literal as a number or a boolean: it is compared as written.
        let text = match (n.as_str(), n.as_i64(), n.as_f64(), n.as_bool()) {
            (Some(s), ..) => s.to_owned(),
            (None, Some(i), ..) => i.to_string(),
            (None, None, Some(f), _) => f.to_string(),
            (None, None, None, Some(b)) => b.to_string(),
            _ => {
                scope.expected(n, &path, "a string");
                return None;
            }
        };
        match Check::parse(&text) {
            Ok(check) => Some(check),
            Err(message) => {
                scope.error(n.line, &path, message);
                None
            }
        }
    });
    Some(CustomClaim {
        key: key?,
        mandatory,
        check: check?,
    })
}

/// The verifying key in `textKey`: the HMAC secret itself (at least as long as the hash,
/// RFC 7518 3.2), or a public key in PEM for rsa and es.
fn text_key_of(text: &str, alg: Algorithm) -> Result<DecodingKey, String> {
    let bits = match alg {
        Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256 => 256,
        Algorithm::HS384 | Algorithm::RS384 | Algorithm::ES384 => 384,
        _ => 512,
    };
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            if text.len() * 8 < bits {
                return Err(format!(
                    "an hmac key for signingKeyLength {bits} must be at least {} bytes, found {}",
                    bits / 8,
                    text.len()
                ));
            }
            Ok(DecodingKey::from_secret(text.as_bytes()))
        }
        _ if text.contains("PRIVATE KEY") => Err(
            "expected a public key in PEM, found a private key: only the public key belongs here"
                .into(),
        ),
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            let bad = || {
                "expected an RSA public key in PEM (BEGIN PUBLIC KEY, RSA PUBLIC KEY or \
                 CERTIFICATE)"
                    .to_owned()
            };
            let pem = DecodingKey::from_rsa_pem(text.trim().as_bytes()).map_err(|_| bad())?;
            let key = rsa::RsaPublicKey::from_pkcs1_der(pem.as_bytes()).map_err(|_| bad())?;
            Ok(DecodingKey::from_rsa_raw_components(
                &key.n().to_bytes_be(),
                &key.e().to_bytes_be(),
            ))
        }
        _ => {
            let curve = if alg == Algorithm::ES256 {
                "P-256"
            } else {
                "P-384"
            };
            let bad = || {
                format!(
                    "expected a {curve} public key in PEM (BEGIN PUBLIC KEY or CERTIFICATE) for \
                     signingKeyLength {bits}"
                )
            };
            let key = DecodingKey::from_ec_pem(text.trim().as_bytes()).map_err(|_| bad())?;
            if !jwks::ec_checked(&key, alg) {
                return Err(bad());
            }
            Ok(key)
        }
    }
}

/// `jwksUrl`: one or more http(s) URLs, comma-separated.
fn jwks_urls(text: &str) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for url in text.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let parsed = url.parse::<ureq::http::Uri>().ok();
        let http = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if !http {
            return Err(format!("`{url}` is not an http or https URL"));
        }
        urls.push(url.to_owned());
    }
    if urls.is_empty() {
        return Err("must name at least one URL".into());
    }
    Ok(urls)
}

// === Deciding ===

/// Why a token did not pass; a static reason for the client.
type Refusal = &'static str;

impl JwtValidation {
    /// The token the request carries, if any.
    fn token<'r>(&'r self, cx: &'r RequestCx<'_>) -> Option<&'r str> {
        let raw = match &self.origin {
            TokenOrigin::Bearer => bearer(cx.req.header("authorization")?)?,
            TokenOrigin::Expression(e) => match e.eval(cx)? {
                ExprValue::Str(s) => s,
                _ => return None,
            },
        };
        // A custom origin reading a bearer header still gives the token.
        let token = bearer(raw).unwrap_or(raw).trim();
        (!token.is_empty()).then_some(token)
    }

    fn verify(&self, token: &str) -> Result<(), Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| INVALID)?;
        if header.alg != self.alg {
            return Err(INVALID);
        }
        match &self.keys {
            Keys::Text(key) => self.decode(token, key),
            Keys::Jwks(jwks) => {
                let set = jwks.keys();
                if !set.loaded {
                    return Err(NO_KEYS);
                }
                match header.kid.as_deref() {
                    Some(kid) => match set.find(kid) {
                        Some(key) => self.decode(token, key),
                        None => {
                            jwks.ask_refresh();
                            Err(INVALID)
                        }
                    },
                    // No `kid`: whichever key verifies it; none may mean a rotation.
                    None => {
                        for k in &set.keys {
                            match self.decode(token, &k.key) {
                                Err(INVALID) => continue,
                                decided => return decided,
                            }
                        }
                        jwks.ask_refresh();
                        Err(INVALID)
                    }
                }
            }
        }
    }

    /// Verifies the signature, `exp` and `nbf`, then the claims this policy checks.
    fn decode(&self, token: &str, key: &DecodingKey) -> Result<(), Refusal> {
        if self.custom.is_empty() && self.client_id.is_none() {
            #[derive(serde::Deserialize)]
            struct AudienceOnly {
                #[serde(default)]
                aud: Option<Value>,
            }
            let data = jsonwebtoken::decode::<AudienceOnly>(token, key, &self.validation)
                .map_err(|e| refusal(e.kind()))?;
            return self.check_audience(data.claims.aud.as_ref());
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        self.check_audience(claims.get("aud"))?;
        for c in &self.custom {
            let passes = match claims.get(&c.key).filter(|v| !v.is_null()) {
                None => !c.mandatory,
                Some(value) => c.check.holds(value, &claims),
            };
            if !passes {
                return Err(CLAIMS);
            }
        }
        if let Some(path) = &self.client_id {
            match path.get(&claims) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::Number(_)) => {}
                _ => return Err(CLIENT_ID),
            }
        }
        Ok(())
    }

    fn check_audience(&self, aud: Option<&Value>) -> Result<(), Refusal> {
        let Some(audience) = &self.audience else {
            return Ok(());
        };
        let accepted = |a: &str| audience.accepted.iter().any(|x| x == a);
        let ok = match aud {
            None | Some(Value::Null) => !audience.mandatory,
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(accepted),
            Some(_) => false,
        };
        ok.then_some(()).ok_or(AUDIENCE)
    }
}

/// The credential of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let (scheme, rest) = value.split_at_checked(6)?;
    (scheme.eq_ignore_ascii_case("bearer") && rest.starts_with([' ', '\t'])).then(|| rest.trim())
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => EXPIRED,
        ErrorKind::ImmatureSignature => NOT_YET_VALID,
        ErrorKind::MissingRequiredClaim(_) => CLAIMS,
        _ => INVALID,
    }
}

impl Policy for JwtValidation {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let decided = match self.token(cx) {
            None => Err(MISSING),
            Some(token) => self.verify(token),
        };
        match decided {
            Ok(()) => Verdict::Continue,
            Err(reason) => {
                // RFC 6750 3.1: no error code when no credential came (or none could be
                // checked); `invalid_token` when one came and failed.
                let challenge: &[u8] = if reason == MISSING || reason == NO_KEYS {
                    b"Bearer"
                } else {
                    b"Bearer error=\"invalid_token\""
                };
                cx.client_headers.add("WWW-Authenticate", challenge);
                Verdict::Reject(401, reason)
            }
        }
    }
}

#[cfg(test)]
mod tests;
