//! Idle keep-alive connections cost the gateway little memory: between requests a
//! connection keeps a small read buffer and gives its write buffer back to its worker, so
//! tens of thousands of idle clients do not need tens of thousands of 16 KiB buffers.

use std::time::Duration;

use ringwall_tests::client::get;
use ringwall_tests::process::{raise_open_files, rss};
use ringwall_tests::*;

/// Idle connections opened for the measure.
const CONNECTIONS: usize = 2000;
/// Connections opened and closed before it.
const WARM_UP: usize = 50;

/// `n` connections that each made one request and now wait, idle. One request at a time:
/// a burst of concurrent requests takes as many write buffers, and what the allocator
/// keeps of them once they are freed is not held by the idle connections measured here.
fn idle_clients(gw: &Gateway, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(gw.addr("api"))).collect();
    for client in &mut clients {
        client.send(get("/").as_bytes());
        assert_eq!(client.read_response("GET").status, 200);
    }
    clients
}

#[test]
fn an_idle_keep_alive_connection_holds_a_few_kilobytes() {
    within(Duration::from_secs(60), || {
        raise_open_files();
        let origin = Origin::ok("fine");
        let gw = Gateway::start(
            &[("api.yaml", &yaml::simple_api(&origin.url()))],
            &["--workers", "1"],
        );
        // A few through first, so that the allocator's arenas, the worker's spare buffers
        // and the upstream pool exist: what is measured next is what idle connections
        // themselves hold. A few only: memory the warm-up freed would be reused by the
        // measured connections and hide what they hold.
        drop(idle_clients(&gw, WARM_UP));
        let settled = gw.metric_until("ringwall_active_connections", &[], |v| v == 0.0);
        assert_eq!(settled, 0.0, "the first connections did not close");

        let before = rss(gw.pid());
        let clients = idle_clients(&gw, CONNECTIONS);
        let per_connection = rss(gw.pid()).saturating_sub(before) / CONNECTIONS;
        eprintln!("{per_connection} bytes per idle connection");
        // About 5.7 KiB in a debug build: the connection's task, its 2 KiB read buffer and
        // its timer. A 16 KiB write buffer kept while idle adds at least the page the
        // response head was written to.
        assert!(
            per_connection < 8192,
            "{per_connection} bytes of resident memory per idle connection"
        );
        // And they still work.
        for mut client in clients.into_iter().take(10) {
            assert_eq!(client.get("/again").status, 200);
        }
    })
}
