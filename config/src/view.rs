//! The effective configuration as the admin listener's `GET /config` shows it: how the model
//! serialises where a derive cannot say it, and the rule that keeps secrets out of it.
//!
//! Field names follow the YAML the user wrote (`basePath`, `upstreamConnectSeconds`, `DB`), so
//! the output reads against the input. Durations are seconds as numbers, rules are their
//! patterns as written, networks are CIDR strings, a route names its upstream (the upstream
//! itself is under `services`). Secrets never appear: a [`Secret`] is `"***"`, and so is every
//! value of a policy `config` that [`is_secret_key`] (or, for header-like pairs,
//! [`is_secret_pair`]) picks out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::connection::ConnectionRules;
use crate::model::Upstream;
use crate::node::{Node, Value};
use crate::rules::Rule;
use crate::storage::Secret;

/// What a redacted value reads as.
pub const REDACTED: &str = "***";

/// Words that mark a policy `config` key as holding a secret (compared lower-cased).
const SECRET_WORDS: [&str; 6] = [
    "password",
    "secret",
    "token",
    "credential",
    "authorization",
    "key",
];

/// Endings that make such a key name where or how a secret is found, not the secret:
/// `keySelector`, `signingKeyLength`, `jwtKeyOrigin`, `clientSecretExpression`, `jwksUrl`,
/// `tokenUri`, `keyFile`, `keyPath`.
const NOT_SECRET_ENDINGS: [&str; 8] = [
    "selector",
    "length",
    "origin",
    "expression",
    "url",
    "uri",
    "file",
    "path",
];

/// Header names whose value is a credential.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Whether the value under `key` in a policy `config` is redacted: the key contains
/// `password`, `secret`, `token`, `credential`, `authorization` or `key` (any case) and does
/// not end in `selector`, `length`, `origin`, `expression`, `url`, `uri`, `file` or `path`.
/// So `password`, `textKey`, `clientSecret`, `apiKey` and `authorizationValue` are hidden, and
/// `keySelector`, `signingKeyLength` and `jwtKeyOrigin` are shown. When in doubt it hides:
/// a hidden setting costs a look at the YAML, a shown secret cannot be taken back.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| key.contains(w))
        && !NOT_SECRET_ENDINGS.iter().any(|e| key.ends_with(e))
}

/// For a header-like pair (a mapping with `value` and a `name` or `key`, as in header
/// injection), whether `value` is redacted: the label is a credential header
/// (`Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`) or a secret by
/// [`is_secret_key`] (`X-Api-Key`). The label itself stays visible.
pub fn is_secret_pair(label: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| label.eq_ignore_ascii_case(h)) || is_secret_key(label)
}

// === impl Serialize ===

/// A plain JSON value, without lines. Faithful: a [`crate::Policy`]'s `config` goes through
/// [`redacted`] instead.
impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(text) => s.serialize_str(text),
            Value::Seq(items) => s.collect_seq(items),
            Value::Map(entries) => s.collect_map(entries.iter().map(|(k, v)| (k, v))),
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// `{path, methods, host, headers}` as written, absent fields left out.
impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, pattern) in [
            ("path", &self.path),
            ("methods", &self.methods),
            ("host", &self.host),
        ] {
            if let Some(re) = pattern {
                map.serialize_entry(name, written(re))?;
            }
        }
        if !self.headers.is_empty() {
            let headers: Vec<(&str, &str)> = self
                .headers
                .iter()
                .map(|(name, re)| (name.as_str(), written(re)))
                .collect();
            map.serialize_entry("headers", &Headers(&headers))?;
        }
        map.end()
    }
}

struct Headers<'a>(&'a [(&'a str, &'a str)]);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().copied())
    }
}

/// The pattern as the user wrote it, without the anchors the loader added.
fn written(re: &regex::Regex) -> &str {
    let full = re.as_str();
    full.strip_prefix("^(?:")
        .and_then(|p| p.strip_suffix(")$"))
        .unwrap_or(full)
}

// === serialize_with helpers ===

/// A policy `config` with its secrets replaced by `"***"`.
pub(crate) fn redacted<S: Serializer>(node: &Node, s: S) -> Result<S::Ok, S::Error> {
    Redacted(node).serialize(s)
}

struct Redacted<'a>(&'a Node);

impl Serialize for Redacted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0.value {
            Value::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Redacted(item))?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let label = ["name", "key"]
                    .iter()
                    .find_map(|k| self.0.get(k).and_then(Node::as_str));
                let pair = label.is_some() && self.0.get("value").is_some();
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    let hidden = if pair && matches!(key.as_str(), "name" | "key" | "value") {
                        key == "value" && label.is_some_and(is_secret_pair)
                    } else {
                        is_secret_key(key)
                    };
                    if hidden && !value.is_null() {
                        map.serialize_entry(key, REDACTED)?;
                    } else {
                        map.serialize_entry(key, &Redacted(value))?;
                    }
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Seconds, fractional.
pub(crate) fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// An upstream by name: the upstream itself is listed once, under `services`.
pub(crate) fn upstream_name<S: Serializer>(u: &Arc<Upstream>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&u.name)
}

/// `[{address, rules}]`.
pub(crate) fn listener_rules<S: Serializer>(
    rules: &[(SocketAddr, ConnectionRules)],
    s: S,
) -> Result<S::Ok, S::Error> {
    struct Entry<'a>(&'a SocketAddr, &'a ConnectionRules);
    impl Serialize for Entry<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut e = s.serialize_struct("ListenerRules", 2)?;
            e.serialize_field("address", self.0)?;
            e.serialize_field("rules", self.1)?;
            e.end()
        }
    }
    s.collect_seq(rules.iter().map(|(a, r)| Entry(a, r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Diagnostics;
    use crate::error::Scope;
    use crate::yaml::parse_documents;

    fn yaml(text: &str) -> Node {
        let mut diag = Diagnostics::default();
        let mut docs = parse_documents(text, &mut Scope::new(&mut diag, "t.yaml"));
        assert!(diag.errors.is_empty(), "{:?}", diag.errors);
        docs.remove(0)
    }

    fn redact(text: &str) -> serde_json::Value {
        serde_json::to_value(Redacted(&yaml(text))).expect("serialises")
    }

    #[test]
    fn secret_keys_are_named_by_word_and_ending() {
        for key in [
            "password",
            "ldapServerUserPassword",
            "textKey",
            "apiKey",
            "KEY",
            "clientSecret",
            "token",
            "authorizationValue",
            "credentials",
        ] {
            assert!(is_secret_key(key), "{key} should be hidden");
        }
        for key in [
            "keySelector",
            "signingKeyLength",
            "jwtKeyOrigin",
            "clientSecretExpression",
            "jwksUrl",
            "tokenUri",
            "keyFile",
            "username",
            "destinationRef",
            "monkeys",
        ] {
            // "monkeys" contains "key": over-hiding is the accepted cost of the rule.
            assert_eq!(is_secret_key(key), key == "monkeys", "{key}");
        }
    }

    #[test]
    fn policy_config_secrets_are_redacted_at_any_depth() {
        let json = redact(
            "username: alice\npassword: hunter2\njwt:\n  textKey: s3cr3t\n  signingKeyLength: 256\n  \
             keySelector: '#[attributes.headers.x]'\nlist:\n  - {apiKey: k, note: fine}\nemptyToken: null\n",
        );
        assert_eq!(
            json,
            serde_json::json!({
                "username": "alice",
                "password": "***",
                "jwt": {"textKey": "***", "signingKeyLength": 256, "keySelector": "#[attributes.headers.x]"},
                "list": [{"apiKey": "***", "note": "fine"}],
                "emptyToken": null,
            })
        );
    }

    #[test]
    fn header_pairs_hide_credential_values_and_keep_their_names() {
        let json = redact(
            "inboundHeaders:\n  - {key: Authorization, value: Bearer abc}\n  - {key: X-Api-Key, value: k1}\n  \
             - {name: X-Trace, value: on}\n",
        );
        assert_eq!(
            json["inboundHeaders"],
            serde_json::json!([
                {"key": "Authorization", "value": "***"},
                {"key": "X-Api-Key", "value": "***"},
                {"name": "X-Trace", "value": "on"},
            ])
        );
    }

    #[test]
    fn rules_show_their_patterns_as_written() {
        let rule = Rule {
            path: regex::Regex::new("^(?:/orders/.*)$").ok(),
            methods: None,
            host: None,
            headers: vec![("x-v".into(), regex::Regex::new("^(?:2)$").expect("re"))],
        };
        assert_eq!(
            serde_json::to_value(&rule).expect("serialises"),
            serde_json::json!({"path": "/orders/.*", "headers": {"x-v": "2"}})
        );
    }

    #[test]
    fn log_outputs_show_their_type_and_path() {
        let file = crate::LogOutput {
            name: "access".into(),
            kind: crate::LogOutputKind::File("/var/log/ringwall/access.log".into()),
        };
        assert_eq!(
            serde_json::to_value(&file).expect("serialises"),
            serde_json::json!({"name": "access", "type": "file", "path": "/var/log/ringwall/access.log"})
        );
    }
}
