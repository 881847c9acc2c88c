//! The routing view of one configuration snapshot: which ApiInstances each listener
//! serves, and the choice of ApiInstance and route for a request. Built once per
//! snapshot, off the hot path, and shared read-only by every worker.

use std::net::SocketAddr;
use std::sync::Arc;

use ringwall_config::{ApiInstance, Route, Snapshot};

use crate::http::request::Request;

#[derive(Debug)]
pub struct Gateway {
    pub snapshot: Arc<Snapshot>,
    pub listeners: Vec<Listener>,
}

/// One listening address and the ApiInstances behind it, longest base path first.
#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    pub apis: Vec<usize>,
}

/// Where a request goes.
pub struct Routed<'g, 'r> {
    pub api: &'g ApiInstance,
    pub route: &'g Route,
    /// The request target (path and query) after the base path.
    pub rest: &'r str,
}

impl Gateway {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, api) in snapshot.apis.iter().enumerate() {
            // Port 0 asks for a port of the system's choosing: each such ApiInstance
            // gets a listener of its own.
            let shared = api.listen.port() != 0;
            match listeners
                .iter_mut()
                .find(|l| shared && l.addr == api.listen)
            {
                Some(l) => l.apis.push(i),
                None => listeners.push(Listener {
                    addr: api.listen,
                    apis: vec![i],
                }),
            }
        }
        for l in &mut listeners {
            l.apis
                .sort_by_key(|&i| std::cmp::Reverse(snapshot.apis[i].base_path.len()));
        }
        Self {
            snapshot,
            listeners,
        }
    }

    /// The ApiInstance with the longest base path the request falls under, then its
    /// first route whose rules match.
    pub fn route<'g, 'r>(
        &'g self,
        listener: usize,
        req: &Request<'_, 'r>,
    ) -> Option<Routed<'g, 'r>> {
        let listener = self.listeners.get(listener)?;
        let (api, path) = listener.apis.iter().find_map(|&i| {
            let api = &self.snapshot.apis[i];
            api.strip_base(req.path).map(|rest| (api, rest))
        })?;
        let path = if path.is_empty() { "/" } else { path };
        let route = api
            .routes
            .iter()
            .find(|r| r.matches(req.method, path, req.host, |name| req.header(name)))?;
        let rest = api.strip_base(req.target)?;
        Some(Routed { api, route, rest })
    }
}
