//! The TLS of one configuration: a rustls server configuration for each listener that
//! terminates TLS, and the client side of each route whose upstream is `https://`. Built
//! with the gateway at every load, off the hot path; connections already open keep the
//! configuration they were made with, so a reload never drops them. Certificates are read
//! again at every load; an upstream's client side is kept when they and its settings are
//! unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use ringwall_config::{ConfigError, Diagnostics, LoadErrors, Node, Scope, Snapshot, Upstream};
use rustls::pki_types::ServerName;
use rustls::ServerConfig;

use super::settings::{next_id, system_roots};
use super::{client_tls, server_config, server_tls, ClientTls, ServerTls};
use crate::gateway::Listener;
use crate::per_route::PerRoute;

/// How connections to one upstream are made over TLS.
pub struct UpstreamTls {
    pub client: Arc<ClientTls>,
    /// The name sent (SNI) and verified: `sni` of `tls-outbound`, else the address's host.
    pub name: ServerName<'static>,
    /// Unique in the process: the pool keeps the connections of each apart, since two
    /// Services on one address may differ in name or in client certificate.
    pub id: u64,
}

pub struct TlsSetup {
    /// Indexed like the gateway's listeners; `None` for a plain one.
    pub listeners: Vec<Option<Arc<ServerConfig>>>,
    /// Each route's upstream's; none for an `http://` upstream.
    pub routes: PerRoute<UpstreamTls>,
    /// Each `https://` upstream's, by name, for the next reload to keep.
    upstreams: HashMap<String, Kept>,
    pub warnings: Vec<ConfigError>,
}

/// An upstream's TLS with what it was made from.
struct Kept {
    config: Option<Node>,
    host: String,
    tls: Arc<UpstreamTls>,
}

/// Reads every `tls` and `tls-outbound` policy of `snapshot` into rustls configurations.
/// Fails when one is invalid, or when the ApiInstances of a listener disagree. An upstream
/// whose settings and certificates are those it had in `previous` keeps its [`UpstreamTls`],
/// and with it its pooled connections and the sessions they resume.
pub fn build(
    snapshot: &Snapshot,
    listeners: &[Listener],
    previous: Option<&TlsSetup>,
) -> Result<TlsSetup, LoadErrors> {
    let mut diag = Diagnostics::default();
    let listeners = listeners
        .iter()
        .map(|l| listener(snapshot, l, &mut diag))
        .collect();
    let mut upstreams = HashMap::new();
    let mut system = false;
    let routes = PerRoute::build(snapshot, |up| {
        if !up.https {
            return None;
        }
        system |= up.tls.is_none();
        let old = previous.and_then(|p| p.upstreams.get(&up.name));
        let tls = upstream(up, old, &mut diag)?;
        let kept = Kept {
            config: up.tls.as_ref().map(|p| p.config.clone()),
            host: up.host.clone(),
            tls: Arc::clone(&tls),
        };
        upstreams.insert(up.name.clone(), kept);
        Some(tls)
    });
    if system {
        if let Some(warning) = system_roots().1 {
            diag.warnings.push(ConfigError {
                file: String::new(),
                line: 0,
                resource: None,
                field: None,
                message: warning.to_owned(),
            });
        }
    }
    if !diag.errors.is_empty() {
        return Err(LoadErrors(diag.errors));
    }
    Ok(TlsSetup {
        listeners,
        routes,
        upstreams,
        warnings: diag.warnings,
    })
}

/// The server configuration of `listener`: the `tls` policies of its ApiInstances, the one
/// loaded first giving the default certificate.
fn listener(
    snapshot: &Snapshot,
    listener: &Listener,
    diag: &mut Diagnostics,
) -> Option<Arc<ServerConfig>> {
    let mut apis = listener.apis.clone();
    apis.sort_unstable();
    let specs: Vec<_> = apis
        .iter()
        .filter_map(|&i| snapshot.apis[i].tls.as_ref())
        .collect();
    let first = *specs.first()?;
    let mut sites: Vec<ServerTls> = Vec::with_capacity(specs.len());
    let mut valid = true;
    for spec in &specs {
        match server_tls(spec, &mut Scope::for_policy(diag, spec)) {
            Some(site) => sites.push(site),
            None => valid = false,
        }
    }
    if !valid {
        return None;
    }
    let port = match &listener.key.port0_api {
        Some(api) => format!("{} {api}", listener.addr),
        None => listener.addr.to_string(),
    };
    match server_config(&sites, &port) {
        Ok(config) => Some(config),
        Err(e) => {
            let message = format!("listener {}: {e}", listener.addr);
            Scope::for_policy(diag, first).error(first.line, "spec.policyRef.name", message);
            None
        }
    }
}

/// The TLS of connections to the `https://` upstream `up`: `old`'s when it was made from
/// the same settings and certificates.
fn upstream(up: &Upstream, old: Option<&Kept>, diag: &mut Diagnostics) -> Option<Arc<UpstreamTls>> {
    let client = match &up.tls {
        Some(spec) => Arc::new(client_tls(spec, &mut Scope::for_policy(diag, spec))?),
        None => ClientTls::system(),
    };
    if let Some(old) = old {
        let config = up.tls.as_ref().map(|p| &p.config);
        if old.config.as_ref() == config
            && old.host == up.host
            && old.tls.client.material == client.material
        {
            return Some(Arc::clone(&old.tls));
        }
    }
    let name = match &client.sni {
        Some(name) => name.clone(),
        None => match ServerName::try_from(up.host.clone()) {
            Ok(name) => name,
            Err(e) => {
                diag.errors.push(ConfigError {
                    file: String::new(),
                    line: 0,
                    resource: Some(format!("Service/{}", up.name)),
                    field: Some("spec.address".into()),
                    message: format!("`{}` cannot be a TLS server name: {e}", up.host),
                });
                return None;
            }
        },
    };
    Some(Arc::new(UpstreamTls {
        client,
        name,
        id: next_id(),
    }))
}
