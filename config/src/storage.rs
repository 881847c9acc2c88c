//! `spec.sharedStorage` of a Configuration: the Redis (a Redis Sentinel, or a Redis Cluster)
//! that distributed policies such as a clusterizable rate limit share their state through.
//!
//! Flex Local Mode knows `redis{address, username, password, DB, tls}` and
//! `sentinel{addresses, masterName, ...}`; a cluster is Ringwall's: `redis.addresses`, a list
//! of seed nodes, in place of `address` (so it reads like `sentinel.addresses`).
//!
//! Addresses are checked as `host:port` but not resolved: Redis may come up after the gateway,
//! and the policies that use it reconnect.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{child, item, Scope};
use crate::node::{Fields, Node};

/// `spec.sharedStorage`: where distributed policies keep their state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SharedStorage {
    Redis(Redis),
    Sentinel(Sentinel),
    /// Written `redis.addresses`, and shown so.
    #[serde(rename = "redis")]
    Cluster(Cluster),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redis {
    /// `host:port`, resolved when connecting (Redis may start after the gateway).
    pub address: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(rename = "DB")]
    pub db: u32,
    pub tls: Option<RedisTls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sentinel {
    /// `host:port` of each sentinel.
    pub addresses: Vec<String>,
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(rename = "DB")]
    pub db: u32,
}

/// `redis.addresses`: a Redis Cluster, found through any of its seed nodes. A cluster has only
/// DB 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// `host:port` of each seed node.
    pub addresses: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<RedisTls>,
}

/// `redis.tls`: TLS to Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisTls {
    pub skip_verify: bool,
    pub server_name: Option<String>,
    #[serde(rename = "trustedCA")]
    pub trusted_ca: Option<PathBuf>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Vec<String>,
    /// Client certificate: `certificate{certFile, keyFile}`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A password: kept out of `Debug` output so settings can be logged, and shown as `"***"`
/// by `GET /config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub(crate) fn parse_shared_storage(
    node: &Node,
    path: &str,
    scope: &mut Scope<'_>,
) -> Option<SharedStorage> {
    let f = scope.map(node, path, &["redis", "sentinel"])?;
    match (f.get("redis"), f.get("sentinel")) {
        (Some(redis), None) => redis_config(redis, &f.path_of("redis"), scope),
        (None, Some(sentinel)) => {
            sentinel_config(sentinel, &f.path_of("sentinel"), scope).map(SharedStorage::Sentinel)
        }
        (Some(_), Some(_)) => {
            scope.error(f.line, path, "set either `redis` or `sentinel`, not both");
            None
        }
        (None, None) => {
            scope.error(f.line, path, "expected `redis` or `sentinel`");
            None
        }
    }
}

/// Optional string field.
fn opt_str(f: &Fields<'_>, key: &str, scope: &mut Scope<'_>) -> Result<Option<String>, ()> {
    match f.get(key) {
        None => Ok(None),
        Some(n) => scope
            .str(n, &f.path_of(key))
            .map(|s| Some(s.to_owned()))
            .ok_or(()),
    }
}

fn db(f: &Fields<'_>, scope: &mut Scope<'_>) -> Option<u32> {
    match f.get("DB") {
        None => Some(0),
        Some(n) => scope
            .int_in(n, &f.path_of("DB"), 0..=i64::from(u32::MAX))
            .and_then(|db| u32::try_from(db).ok()),
    }
}

fn redis_config(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<SharedStorage> {
    let f = scope.map(
        node,
        path,
        &["address", "addresses", "username", "password", "DB", "tls"],
    )?;
    let username = opt_str(&f, "username", scope);
    let password = opt_str(&f, "password", scope);
    let db = db(&f, scope);
    let tls = match f.get("tls") {
        None => Some(None),
        Some(n) => redis_tls(n, &f.path_of("tls"), scope).map(Some),
    };
    match (f.get("address"), f.get("addresses")) {
        (Some(n), None) => {
            let address = host_port(n, &f.path_of("address"), scope);
            Some(SharedStorage::Redis(Redis {
                address: address?,
                username: username.ok()?,
                password: password.ok()?.map(Secret),
                db: db?,
                tls: tls?,
            }))
        }
        (None, Some(n)) => {
            let addresses = addresses(n, &f.path_of("addresses"), "seed node", scope);
            if let (Some(db), Some(n)) = (db, f.get("DB")) {
                if db != 0 {
                    scope.error(n.line, &f.path_of("DB"), "a Redis Cluster has only DB 0");
                    return None;
                }
            }
            if let (
                Some(Some(RedisTls {
                    server_name: Some(_),
                    ..
                })),
                Some(n),
            ) = (&tls, f.get("tls"))
            {
                let message = "a Redis Cluster's nodes are verified under the addresses they \
                               announce: `serverName` cannot be set";
                scope.error(n.line, &child(&f.path_of("tls"), "serverName"), message);
                return None;
            }
            db?;
            Some(SharedStorage::Cluster(Cluster {
                addresses: addresses?,
                username: username.ok()?,
                password: password.ok()?.map(Secret),
                tls: tls?,
            }))
        }
        (Some(_), Some(_)) => {
            let message = "set either `address` or `addresses` (a Redis Cluster), not both";
            scope.error(f.line, path, message);
            None
        }
        (None, None) => {
            let message = "expected `address` (or `addresses` for a Redis Cluster)";
            scope.error(f.line, path, message);
            None
        }
    }
}

fn redis_tls(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<RedisTls> {
    let f = scope.map(
        node,
        path,
        &[
            "skipVerify",
            "serverName",
            "trustedCA",
            "minVersion",
            "maxVersion",
            "cipherSuites",
            "certificate",
        ],
    )?;
    let mut ok = true;
    let mut tls = RedisTls::default();
    if let Some(n) = f.get("skipVerify") {
        match scope.bool(n, &f.path_of("skipVerify")) {
            Some(b) => tls.skip_verify = b,
            None => ok = false,
        }
    }
    let mut text = |key: &str, scope: &mut Scope<'_>| {
        let value = opt_str(&f, key, scope);
        ok &= value.is_ok();
        value.ok().flatten()
    };
    tls.server_name = text("serverName", scope);
    tls.trusted_ca = text("trustedCA", scope).map(PathBuf::from);
    tls.min_version = text("minVersion", scope);
    tls.max_version = text("maxVersion", scope);
    // The client negotiates TLS 1.2 or 1.3 with rustls's default suites; say so when asked
    // for anything narrower rather than pretend.
    let narrower = tls.min_version.as_deref() == Some("1.3")
        || tls.max_version.as_deref().is_some_and(|v| v != "1.3");
    if narrower {
        let message = "not enforced: Ringwall's Redis client negotiates TLS 1.2 or 1.3";
        scope.warn(f.line, path, message);
    }
    if let Some(n) = f.get("cipherSuites") {
        let path = f.path_of("cipherSuites");
        for (i, suite) in scope.seq(n, &path).unwrap_or_default().iter().enumerate() {
            match scope.str(suite, &item(&path, i)) {
                Some(s) => tls.cipher_suites.push(s.to_owned()),
                None => ok = false,
            }
        }
        if !tls.cipher_suites.is_empty() {
            let message = "not enforced: Ringwall's Redis client offers rustls's default suites";
            scope.warn(n.line, &path, message);
        }
    }
    if let Some(n) = f.get("certificate") {
        match scope.map(n, &f.path_of("certificate"), &["certFile", "keyFile"]) {
            Some(c) => {
                let cert = opt_str(&c, "certFile", scope);
                let key = opt_str(&c, "keyFile", scope);
                match (cert, key) {
                    (Ok(Some(cert)), Ok(Some(key))) => {
                        tls.cert_file = Some(cert.into());
                        tls.key_file = Some(key.into());
                    }
                    (Ok(_), Ok(_)) => {
                        let message = "a client certificate needs both `certFile` and `keyFile`";
                        scope.error(c.line, &c.path, message);
                        ok = false;
                    }
                    _ => ok = false,
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(tls)
}

fn sentinel_config(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Sentinel> {
    let f = scope.map(
        node,
        path,
        &["addresses", "masterName", "username", "password", "DB"],
    )?;
    let addresses = scope
        .require(&f, "addresses")
        .and_then(|n| addresses(n, &f.path_of("addresses"), "sentinel", scope));
    let master_name = scope
        .require(&f, "masterName")
        .and_then(|n| scope.str(n, &f.path_of("masterName")));
    let username = opt_str(&f, "username", scope);
    let password = opt_str(&f, "password", scope);
    let db = db(&f, scope);
    Some(Sentinel {
        addresses: addresses?,
        master_name: master_name?.to_owned(),
        username: username.ok()?,
        password: password.ok()?.map(Secret),
        db: db?,
    })
}

/// A non-empty list of `host:port` addresses of `what`s.
fn addresses(node: &Node, path: &str, what: &str, scope: &mut Scope<'_>) -> Option<Vec<String>> {
    let items = scope.seq(node, path)?;
    if items.is_empty() {
        scope.error(
            node.line,
            path,
            format!("expected at least one {what} address"),
        );
        return None;
    }
    let parsed: Vec<Option<String>> = items
        .iter()
        .enumerate()
        .map(|(i, a)| host_port(a, &item(path, i), scope))
        .collect();
    parsed.into_iter().collect()
}

/// A `host:port` string (no scheme), checked but not resolved. A URL is refused without
/// being quoted: it may carry a password, and addresses are logged.
fn host_port(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<String> {
    let text = scope.str(node, path)?;
    if text.contains("://") || text.contains('@') {
        let message = "expected `host:port`, not a URL (credentials go in `username` and \
                       `password`)";
        scope.error(node.line, path, message);
        return None;
    }
    let valid = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Some(text.to_owned())
    } else {
        let message = format!("`{text}` is not a `host:port` address");
        scope.error(node.line, path, message);
        None
    }
}
