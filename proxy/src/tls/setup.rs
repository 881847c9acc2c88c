//! The TLS of one configuration: a rustls server configuration for each listener that
//! terminates TLS, and the client side of each route whose upstream is `https://`. Built
//! with the gateway at every load, off the hot path; connections already open keep the
//! configuration they were made with, so a reload never drops them.

use std::collections::HashMap;
use std::sync::Arc;

use ringwall_config::{ConfigError, Diagnostics, LoadErrors, Scope, Snapshot, Upstream};
use rustls::pki_types::ServerName;
use rustls::ServerConfig;

use super::settings::{next_id, system_roots};
use super::{client_tls, server_config, server_tls, ClientTls, ServerTls};
use crate::gateway::Listener;

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
    /// Indexed by ApiInstance then route; `None` for an `http://` upstream.
    pub routes: Vec<Vec<Option<Arc<UpstreamTls>>>>,
    pub warnings: Vec<ConfigError>,
}

/// Reads every `tls` and `tls-outbound` policy of `snapshot` into rustls configurations.
/// Fails when one is invalid, or when the ApiInstances of a listener disagree.
pub fn build(snapshot: &Snapshot, listeners: &[Listener]) -> Result<TlsSetup, LoadErrors> {
    let mut diag = Diagnostics::default();
    let listeners = listeners
        .iter()
        .map(|l| listener(snapshot, l, &mut diag))
        .collect();
    let mut upstreams: HashMap<&str, Option<Arc<UpstreamTls>>> = HashMap::new();
    let mut system = false;
    let routes = snapshot
        .apis
        .iter()
        .map(|api| {
            api.routes
                .iter()
                .map(|route| {
                    let up = &route.upstream;
                    if !up.https {
                        return None;
                    }
                    system |= up.tls.is_none();
                    upstreams
                        .entry(&up.name)
                        .or_insert_with(|| upstream(up, &mut diag))
                        .clone()
                })
                .collect()
        })
        .collect();
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
    match server_config(&sites) {
        Ok(config) => Some(config),
        Err(e) => {
            let message = format!("listener {}: {e}", listener.addr);
            Scope::for_policy(diag, first).error(first.line, "spec.policyRef.name", message);
            None
        }
    }
}

/// The TLS of connections to the `https://` upstream `up`.
fn upstream(up: &Upstream, diag: &mut Diagnostics) -> Option<Arc<UpstreamTls>> {
    let client = match &up.tls {
        Some(spec) => Arc::new(client_tls(spec, &mut Scope::for_policy(diag, spec))?),
        None => ClientTls::system(),
    };
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
