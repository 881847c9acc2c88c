//! How does routing scale with the number of routes? The choice of ApiInstance and route for
//! one request head, for 10, 1,000 and 10,000 routes on one ApiInstance, each a route
//! binding with a path rule (`/svc-<i>/.*`), as a large Flex configuration writes them.
//! Routes are tried in order, so the request is sent to the last route (the worst case) and
//! to the first (the best). The answer says whether the router needs an index before it can
//! serve thousands of routes.

use std::fmt::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringwall::gateway::Gateway;
use ringwall::http::request::{self, MAX_HEADERS};

/// One ApiInstance, one Service and `n` route bindings.
fn config(n: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: gateway.mulesoft.com/v1alpha1\nkind: ApiInstance\nmetadata: {name: a}\n\
         spec:\n  address: http://127.0.0.1:0\n---\n\
         apiVersion: gateway.mulesoft.com/v1alpha1\nkind: Service\nmetadata: {name: s}\n\
         spec:\n  address: http://127.0.0.1:9\n",
    );
    for i in 0..n {
        let _ = write!(
            yaml,
            "---\napiVersion: gateway.mulesoft.com/v1alpha1\nkind: PolicyBinding\n\
             metadata: {{name: r{i}}}\nspec:\n  targetRef: {{name: a}}\n  policyRef: {{name: route}}\n  \
             order: {i}\n  rules: [{{path: /svc-{i}/.*}}]\n  config: {{destinationRef: {{name: s}}}}\n"
        );
    }
    yaml
}

fn gateway(n: usize) -> Gateway {
    let snapshot = ringwall_config::load_files(&[("routes.yaml".into(), config(n))])
        .expect("a valid configuration");
    Gateway::build(Arc::new(snapshot), None).expect("valid policies")
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10, 1_000, 10_000] {
        let gw = gateway(n);
        for (case, target) in [("first", 0), ("last", n - 1)] {
            let raw = format!("GET /svc-{target}/orders?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
            group.bench_with_input(BenchmarkId::new(case, n), &raw, |b, raw| {
                b.iter(|| {
                    let mut headers = ringwall::http::header_slots::<MAX_HEADERS>();
                    let req = request::parse(raw.as_bytes(), &mut headers, 65536)
                        .ok()
                        .flatten()
                        .expect("a head");
                    let routed = gw.route(0, &req, 0).expect("an ApiInstance");
                    assert_eq!(routed.route_index, target);
                    routed.route_index
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
