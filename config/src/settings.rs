//! Gateway-wide settings from `kind: Configuration` resources.
//!
//! Several Configuration resources merge section by section (`logging`, `sharedStorage`,
//! `timeouts`, `limits`, `proxyProtocol`); one section set in two resources is an error rather
//! than a silent override, since which one wins would depend on file names. Unset settings keep
//! the defaults documented in CONTRACTS.md.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::error::Scope;
use crate::logging::{parse_logging, Logging};
use crate::node::Node;
use crate::storage::{parse_shared_storage, SharedStorage};

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub logging: Logging,
    pub shared_storage: Option<SharedStorage>,
    /// Expect a PROXY protocol header on every accepted connection.
    pub proxy_protocol: bool,
}

/// Shown as the seconds the YAML sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// `upstreamConnectSeconds` (Ringwall's), default 5 s.
    #[serde(
        rename = "upstreamConnectSeconds",
        serialize_with = "crate::view::seconds"
    )]
    pub upstream_connect: Duration,
    /// `upstreamResponseSeconds`, default 15 s.
    #[serde(
        rename = "upstreamResponseSeconds",
        serialize_with = "crate::view::seconds"
    )]
    pub upstream_response: Duration,
    /// `upstreamConnectionIdleSeconds`: idle pooled upstream connections, default 60 s.
    #[serde(
        rename = "upstreamConnectionIdleSeconds",
        serialize_with = "crate::view::seconds"
    )]
    pub upstream_idle: Duration,
    /// `streamIdleSeconds`: idle client keep-alive, default 300 s.
    #[serde(rename = "streamIdleSeconds", serialize_with = "crate::view::seconds")]
    pub stream_idle: Duration,
    /// `requestHeaderSeconds` (Ringwall's): a request head must arrive whole within this
    /// time of its first byte (slowloris), default 30 s.
    #[serde(
        rename = "requestHeaderSeconds",
        serialize_with = "crate::view::seconds"
    )]
    pub request_header: Duration,
    /// `tlsHandshakeSeconds` (Ringwall's): a client's whole TLS handshake, default 10 s.
    #[serde(
        rename = "tlsHandshakeSeconds",
        serialize_with = "crate::view::seconds"
    )]
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(15),
            upstream_idle: Duration::from_secs(60),
            stream_idle: Duration::from_secs(300),
            tls_handshake: Duration::from_secs(10),
            request_header: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// `maxRequestHeaderBytes`, 1024..=1048576, default 32768.
    #[serde(rename = "maxRequestHeaderBytes")]
    pub max_header_bytes: usize,
    /// `maxRequestBodyBytes`; no limit by default.
    #[serde(rename = "maxRequestBodyBytes")]
    pub max_body_bytes: Option<u64>,
    /// `maxRequestHeaders`: header lines in a request head, 1..=128, default 100 (more: 431).
    #[serde(rename = "maxRequestHeaders")]
    pub max_headers: usize,
    /// `maxRequestUriBytes`: the request target, 64..=1048576, default 8192 (longer: 414).
    #[serde(rename = "maxRequestUriBytes")]
    pub max_uri_bytes: usize,
    /// `maxConnections`: open client connections in the process, shared evenly by the
    /// workers; at the limit a worker stops accepting until one closes. By default, as
    /// many as the open-files limit leaves room for.
    #[serde(rename = "maxConnections")]
    pub max_connections: Option<usize>,
}

/// The most header lines a request may have (the parser's fixed array).
pub const MAX_REQUEST_HEADERS: usize = 128;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 32768,
            max_body_bytes: None,
            max_headers: 100,
            max_uri_bytes: 8192,
            max_connections: None,
        }
    }
}

// === merging Configuration resources ===

const SECTIONS: &[&str] = &[
    "logging",
    "sharedStorage",
    "timeouts",
    "limits",
    "proxyProtocol",
];

/// Settings being merged, remembering which resource set each section.
#[derive(Default)]
pub(crate) struct SettingsBuilder {
    pub settings: Settings,
    set_by: HashMap<&'static str, String>,
}

impl SettingsBuilder {
    /// Merges one Configuration's `spec` into the settings.
    pub fn apply(&mut self, spec: &Node, scope: &mut Scope<'_>) {
        let Some(fields) = scope.map(spec, "spec", SECTIONS) else {
            return;
        };
        for &section in SECTIONS {
            let Some(node) = fields.get(section) else {
                continue;
            };
            let path = fields.path_of(section);
            let here = format!(
                "{} ({}:{})",
                scope.resource.as_deref().unwrap_or("Configuration"),
                scope.file,
                node.line
            );
            if let Some(first) = self.set_by.get(section) {
                let message = format!("`{section}` is already set by {first}");
                scope.error(node.line, &path, message);
                continue;
            }
            self.set_by.insert(section, here);
            let settings = &mut self.settings;
            match section {
                "logging" => {
                    if let Some(logging) = parse_logging(node, &path, scope) {
                        settings.logging = logging;
                    }
                }
                "sharedStorage" => {
                    settings.shared_storage = parse_shared_storage(node, &path, scope)
                }
                "timeouts" => timeouts(node, &path, &mut settings.timeouts, scope),
                "limits" => limits(node, &path, &mut settings.limits, scope),
                _ => {
                    if let Some(f) = scope.map(node, &path, &["enabled"]) {
                        if let Some(enabled) = f.get("enabled") {
                            let enabled = scope.bool(enabled, &f.path_of("enabled"));
                            settings.proxy_protocol = enabled.unwrap_or(false);
                        }
                    }
                }
            }
        }
    }
}

fn timeouts(node: &Node, path: &str, timeouts: &mut Timeouts, scope: &mut Scope<'_>) {
    let Some(f) = scope.map(
        node,
        path,
        &[
            "upstreamConnectSeconds",
            "upstreamResponseSeconds",
            "upstreamConnectionIdleSeconds",
            "streamIdleSeconds",
            "tlsHandshakeSeconds",
            "requestHeaderSeconds",
        ],
    ) else {
        return;
    };
    let fields: [(&str, &mut Duration); 6] = [
        ("upstreamConnectSeconds", &mut timeouts.upstream_connect),
        ("upstreamResponseSeconds", &mut timeouts.upstream_response),
        ("upstreamConnectionIdleSeconds", &mut timeouts.upstream_idle),
        ("streamIdleSeconds", &mut timeouts.stream_idle),
        ("tlsHandshakeSeconds", &mut timeouts.tls_handshake),
        ("requestHeaderSeconds", &mut timeouts.request_header),
    ];
    for (key, slot) in fields {
        if let Some(d) = f.get(key).and_then(|n| seconds(n, &f.path_of(key), scope)) {
            *slot = d;
        }
    }
}

fn seconds(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Duration> {
    let secs = scope.number(node, path)?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) => Some(d),
        Err(_) => {
            let message = format!("must be a non-negative number of seconds, found {secs}");
            scope.error(node.line, path, message);
            None
        }
    }
}

fn limits(node: &Node, path: &str, limits: &mut Limits, scope: &mut Scope<'_>) {
    let Some(f) = scope.map(
        node,
        path,
        &[
            "maxRequestHeaderBytes",
            "maxRequestBodyBytes",
            "maxRequestHeaders",
            "maxRequestUriBytes",
            "maxConnections",
        ],
    ) else {
        return;
    };

    if let Some(n) = f.get("maxRequestHeaderBytes") {
        let bytes = scope.int_in(n, &f.path_of("maxRequestHeaderBytes"), 1024..=1_048_576);
        if let Some(bytes) = bytes.and_then(|b| usize::try_from(b).ok()) {
            limits.max_header_bytes = bytes;
        }
    }
    if let Some(n) = f.get("maxRequestBodyBytes") {
        let bytes = scope.int_in(n, &f.path_of("maxRequestBodyBytes"), 0..=i64::MAX);
        if let Some(bytes) = bytes.and_then(|b| u64::try_from(b).ok()) {
            limits.max_body_bytes = Some(bytes);
        }
    }
    let mut size = |key: &str, range: std::ops::RangeInclusive<i64>, slot: &mut usize| {
        if let Some(n) = f.get(key) {
            let value = scope.int_in(n, &f.path_of(key), range);
            if let Some(value) = value.and_then(|v| usize::try_from(v).ok()) {
                *slot = value;
            }
        }
    };
    size(
        "maxRequestHeaders",
        1..=MAX_REQUEST_HEADERS as i64,
        &mut limits.max_headers,
    );
    size(
        "maxRequestUriBytes",
        64..=1_048_576,
        &mut limits.max_uri_bytes,
    );
    let mut connections = 0;
    size("maxConnections", 1..=100_000_000, &mut connections);
    if connections > 0 {
        limits.max_connections = Some(connections);
    }
}
