//! What the gateway builds once per upstream (its TLS, circuit breaker, health checks) and
//! finds per request by route: one table, filled by calling a builder once for each distinct
//! upstream of a snapshot's routes, in route order.

use std::collections::HashMap;
use std::sync::Arc;

use ringwall_config::{Snapshot, Upstream};

pub struct PerRoute<T> {
    /// Indexed by ApiInstance then route.
    routes: Vec<Vec<Option<Arc<T>>>>,
    /// By upstream identity (its address, the snapshot holding it alive as long as this).
    by_upstream: HashMap<usize, Option<Arc<T>>>,
}

impl<T> Default for PerRoute<T> {
    fn default() -> Self {
        PerRoute {
            routes: Vec::new(),
            by_upstream: HashMap::new(),
        }
    }
}

fn identity(up: &Arc<Upstream>) -> usize {
    Arc::as_ptr(up) as usize
}

impl<T> PerRoute<T> {
    /// Calls `build` once per distinct upstream of `snapshot`'s routes; `None` leaves its
    /// routes without one.
    pub fn build(
        snapshot: &Snapshot,
        mut build: impl FnMut(&Arc<Upstream>) -> Option<Arc<T>>,
    ) -> Self {
        let mut by_upstream: HashMap<usize, Option<Arc<T>>> = HashMap::new();
        let routes = snapshot
            .apis
            .iter()
            .map(|api| {
                api.routes
                    .iter()
                    .map(|route| {
                        let up = &route.upstream;
                        by_upstream
                            .entry(identity(up))
                            .or_insert_with(|| build(up))
                            .clone()
                    })
                    .collect()
            })
            .collect();
        PerRoute {
            routes,
            by_upstream,
        }
    }

    /// The value of route `route` of ApiInstance `api`.
    pub fn get(&self, api: usize, route: usize) -> Option<&Arc<T>> {
        self.routes.get(api)?.get(route)?.as_ref()
    }

    /// The value built for `up`.
    pub fn of_upstream(&self, up: &Arc<Upstream>) -> Option<&Arc<T>> {
        self.by_upstream.get(&identity(up))?.as_ref()
    }

    /// Every value built, each once.
    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_upstream.values().flatten()
    }
}
