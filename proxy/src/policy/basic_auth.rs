//! `http-basic-authentication-flex`: one `username` and `password`, checked against the
//! request's `Authorization: Basic` header (RFC 7617).
//!
//! Both are plain text in the config, as in Flex's own example (`username: chris`); the
//! client sends them base64-encoded as `username:password`. `password` usually comes from the
//! environment (`password: $API_PASSWORD`). Missing, malformed or wrong credentials are a 401
//! with `WWW-Authenticate: Basic realm="ringwall", charset="UTF-8"`: Flex names no realm, and
//! one fixed realm means a browser asks once for the whole gateway.
//!
//! The comparison takes the same time whatever the client sends. The configured values are
//! kept only as SHA-256 digests, the client's are hashed likewise, and the digests are
//! compared in constant time (`subtle`), username and password both, always. Digests rather
//! than the values themselves because a constant-time comparison of slices still returns at
//! once when their lengths differ, which would tell a client the secret's length; hashing
//! costs time that depends on the client's own input only.

use std::sync::Arc;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use ringwall_config::Scope;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{config_fields, Policy, RequestCx, Verdict};

/// The most a decoded `user:password` may hold. Longer credentials are refused without
/// being decoded, so decoding needs no allocation; configured ones must fit.
pub(super) const MAX_CREDENTIALS: usize = 1024;

/// The `WWW-Authenticate` value of a refusal.
pub(super) const CHALLENGE: &[u8] = b"Basic realm=\"ringwall\", charset=\"UTF-8\"";

/// Standard base64, padding optional: some clients leave it out.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

struct BasicAuth {
    username: [u8; 32],
    password: [u8; 32],
}

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(spec, scope, &["username", "password"])?;
    let mut text = |key: &str| {
        let node = scope.require(&fields, key)?;
        let path = fields.path_of(key);
        let value = scope.str(node, &path)?;
        if value.is_empty() {
            scope.error(node.line, &path, "must not be empty");
            return None;
        }
        Some((value, node.line, path))
    };
    let username = text("username");
    let password = text("password");
    let ((username, user_line, user_path), (password, pass_line, pass_path)) =
        (username?, password?);
    if username.contains(':') {
        let message = "cannot contain `:`: the header separates the username from the \
                       password at the first colon";
        scope.error(user_line, &user_path, message);
        return None;
    }
    if username.len() + 1 + password.len() > MAX_CREDENTIALS {
        let message = format!(
            "the username and password together must be at most {} bytes",
            MAX_CREDENTIALS - 1
        );
        scope.error(pass_line, &pass_path, message);
        return None;
    }
    Some(Arc::new(BasicAuth {
        username: digest(username.as_bytes()),
        password: digest(password.as_bytes()),
    }))
}

pub(super) fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The `user` and `password` of an `Authorization: Basic` value, decoded into `buf`; `None`
/// when the value is another scheme, not base64, too long, or has no colon.
pub(super) fn basic_credentials<'b>(
    header: &str,
    buf: &'b mut [u8; MAX_CREDENTIALS],
) -> Option<(&'b [u8], &'b [u8])> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let len = BASE64.decode_slice(token.trim(), buf).ok()?;
    let decoded = buf.get(..len)?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((&decoded[..colon], &decoded[colon + 1..]))
}

impl Policy for BasicAuth {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let mut buf = [0u8; MAX_CREDENTIALS];
        let sent = cx
            .req
            .header("authorization")
            .and_then(|h| basic_credentials(h, &mut buf));
        let reason = match sent {
            None => "missing credentials",
            Some((user, password)) => {
                let same =
                    digest(user).ct_eq(&self.username) & digest(password).ct_eq(&self.password);
                if bool::from(same) {
                    return Verdict::Continue;
                }
                "invalid credentials"
            }
        };
        cx.client_headers.add("WWW-Authenticate", CHALLENGE);
        Verdict::Reject(401, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, error_of, run, with_policy};
    use super::*;

    fn basic(user_password: &str) -> String {
        BASE64.encode(user_password)
    }

    fn get(authorization: Option<&str>) -> Vec<u8> {
        let mut raw = b"GET /orders HTTP/1.1\r\nHost: a\r\n".to_vec();
        if let Some(value) = authorization {
            raw.extend_from_slice(format!("Authorization: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    const CONFIG: &str = "    username: chris\n    password: 's3cr:et'\n";

    #[test]
    fn the_right_credentials_pass_and_others_get_a_challenge() {
        let (snapshot, policies) =
            compiled(&with_policy("http-basic-authentication-flex", CONFIG)).expect("valid");
        let check = |auth: Option<&str>| run(&policies, &snapshot, &get(auth), "192.0.2.1:1");

        let good = check(Some(&format!("Basic {}", basic("chris:s3cr:et"))));
        assert_eq!(good.verdict, None);
        assert_eq!(good.client, "");
        // The scheme is case-insensitive, and padding optional.
        let unpadded = basic("chris:s3cr:et").trim_end_matches('=').to_owned();
        assert_eq!(check(Some(&format!("basic  {unpadded}"))).verdict, None);

        let challenge = "WWW-Authenticate: Basic realm=\"ringwall\", charset=\"UTF-8\"\r\n";
        for (auth, reason) in [
            (None, "missing credentials"),
            (Some("Bearer abc".to_owned()), "missing credentials"),
            (Some("Basic !!!".to_owned()), "missing credentials"),
            (
                Some(format!("Basic {}", basic("chris"))),
                "missing credentials",
            ),
            (
                Some(format!("Basic {}", basic("chris:wrong"))),
                "invalid credentials",
            ),
            (
                Some(format!("Basic {}", basic("chris:s3cr"))),
                "invalid credentials",
            ),
            (
                Some(format!("Basic {}", basic("Chris:s3cr:et"))),
                "invalid credentials",
            ),
            (
                Some(format!("Basic {}", basic(":s3cr:et"))),
                "invalid credentials",
            ),
            (
                Some(format!("Basic {}", basic(&"x".repeat(2000)))),
                "missing credentials",
            ),
        ] {
            let out = check(auth.as_deref());
            assert_eq!(out.verdict, Some((401, reason)), "{auth:?}");
            assert_eq!(out.client, challenge, "{auth:?}");
        }
    }

    #[test]
    fn the_config_is_checked() {
        let yaml = with_policy("http-basic-authentication-flex", "    username: chris\n");
        assert_eq!(
            error_of(&yaml),
            "15: spec.config.password: missing required field `password`"
        );
        let yaml = with_policy(
            "http-basic-authentication-flex",
            "    username: 'a:b'\n    password: x\n",
        );
        assert_eq!(
            error_of(&yaml),
            "16: spec.config.username: cannot contain `:`: the header separates the username \
             from the password at the first colon"
        );
        let yaml = with_policy(
            "http-basic-authentication-flex",
            "    username: a\n    password: ''\n",
        );
        assert_eq!(
            error_of(&yaml),
            "17: spec.config.password: must not be empty"
        );
        let yaml = with_policy(
            "http-basic-authentication-flex",
            "    username: a\n    password: 1234\n",
        );
        assert_eq!(
            error_of(&yaml),
            "17: spec.config.password: expected a string, found an integer"
        );
        let long = format!("    username: a\n    password: {}\n", "p".repeat(1023));
        assert_eq!(
            error_of(&with_policy("http-basic-authentication-flex", &long)),
            "17: spec.config.password: the username and password together must be at most 1023 \
             bytes"
        );
        let yaml = with_policy(
            "http-basic-authentication-flex",
            "    username: a\n    password: b\n    realm: x\n",
        );
        assert!(error_of(&yaml).starts_with("18: spec.config.realm: unknown field `realm`"));
    }

    #[test]
    fn the_password_may_come_from_the_environment() {
        let yaml = with_policy(
            "http-basic-authentication-flex",
            "    username: chris\n    password: $RINGWALL_TEST_BASIC_PASSWORD\n",
        );
        let snapshot = ringwall_config::load_files_with_env(&[("p.yaml".into(), yaml)], |name| {
            (name == "RINGWALL_TEST_BASIC_PASSWORD").then(|| "from-env".to_owned())
        })
        .expect("valid");
        let policies = super::super::compile(&snapshot, None, &Default::default()).expect("valid");
        let auth = format!("Basic {}", basic("chris:from-env"));
        assert_eq!(
            run(&policies, &snapshot, &get(Some(&auth)), "192.0.2.1:1").verdict,
            None
        );
    }
}
