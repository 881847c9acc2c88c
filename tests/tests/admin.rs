//! The admin endpoints an operator scrapes: Prometheus metrics and the configuration in
//! force, both following reloads.

use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// Scrapes until `series` reaches `want`: an exchange is counted in its log phase, just
/// after its response went out, so a client can scrape before its request is counted.
fn scrape_until(admin: std::net::SocketAddr, series: &str, want: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = Client::connect(admin).get("/metrics").text();
        if sample(&text, series) == Some(want) || std::time::Instant::now() > deadline {
            return text;
        }
        // Poll interval only: what is awaited is the counter itself.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_and_config_follow_traffic_and_reloads() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("hello");
        let down = closed_port();
        let two_routes = |up: &str| {
            api_instance(
                "api",
                ANY_PORT,
                &[
                    InlineService::new(
                        "down",
                        &format!("http://{}", down.addr()),
                        vec![Route::all().rule(Rule::path("/down"))],
                    ),
                    InlineService::new("up", up, vec![Route::all()]),
                ],
            )
        };
        let mut gw = Gateway::start(
            &[("api.yaml", &two_routes(&origin.url()))],
            &["--admin", "127.0.0.1:0", "--no-watch"],
        );
        let admin = gw.admin_addr();
        let mut client = Client::connect(gw.addr("api"));
        for _ in 0..3 {
            assert_eq!(client.get("/x").status, 200);
        }
        assert_eq!(Client::connect(gw.addr("api")).get("/down").status, 502);

        let down_series =
            r#"ringwall_requests_total{api="api",route="down",method="GET",status_class="5xx"}"#;
        scrape_until(admin, down_series, 1.0);
        let metrics = Client::connect(admin).get("/metrics");
        assert_eq!(metrics.status, 200);
        assert!(metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
        let text = metrics.text();
        assert_eq!(
            sample(
                &text,
                r#"ringwall_requests_total{api="api",route="up",method="GET",status_class="2xx"}"#
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"ringwall_requests_total{api="api",route="down",method="GET",status_class="5xx"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"ringwall_refused_total{status="502"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"ringwall_upstream_connect_errors_total{service="api/down"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "ringwall_config_generation"),
            Some(1.0),
            "{text}"
        );
        assert!(
            text.contains("ringwall_request_duration_seconds_bucket"),
            "{text}"
        );
        // The allocator's free memory, looked at every 2 s from the start; a trim needs a
        // burst (the soak test's).
        assert!(
            sample(&text, "ringwall_heap_free_bytes").is_some(),
            "{text}"
        );
        assert!(
            sample(&text, "ringwall_heap_trims_total").is_some(),
            "{text}"
        );

        let config = Client::connect(admin).get("/config");
        assert_eq!(config.status, 200);
        assert!(
            config.text().contains("\"generation\": 1"),
            "{}",
            config.text()
        );

        assert_eq!(
            gw.reload_with("api.yaml", Some(&two_routes(&origin.url()))),
            "reloaded generation=2"
        );
        let broken = two_routes(&origin.url()).replace("services:", "servics:");
        assert!(gw
            .reload_with("api.yaml", Some(&broken))
            .starts_with("reload-failed"));
        let text = Client::connect(admin).get("/metrics").text();
        assert_eq!(
            sample(&text, r#"ringwall_config_reloads_total{result="ok"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, r#"ringwall_config_reloads_total{result="failed"}"#),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "ringwall_config_generation"),
            Some(2.0),
            "{text}"
        );
        assert!(Client::connect(admin)
            .get("/config")
            .text()
            .contains("\"generation\": 2"));
    })
}

#[test]
fn connection_rule_counters_follow_rules_that_arrive_by_reload() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("hello");
        let api = simple_api(&origin.url());
        let mut gw = Gateway::start(&[("api.yaml", &api)], &["--no-watch", "--xdp", "off"]);
        assert_eq!(gw.connection_rules(), "none");
        let admin = gw.admin_addr();
        assert_eq!(
            Client::connect(admin)
                .get("/connection-rules")
                .text()
                .trim_end(),
            "{\"enforced_in\":\"none\"}"
        );

        let block = "apiVersion: gateway.mulesoft.com/v1alpha1\nkind: PolicyBinding\nmetadata:\n  name: block\nspec:\n  \
                     targetRef:\n    name: api\n  policyRef:\n    name: ip-blocklist-flex\n  config:\n    ips: [192.0.2.0/24]\n";
        assert_eq!(
            gw.reload_with("block.yaml", Some(block)),
            "reloaded generation=2"
        );
        assert_eq!(Client::connect(gw.addr("api")).get("/").status, 200);
        let json = Client::connect(admin).get("/connection-rules").text();
        assert!(json.starts_with("{\"enforced_in\":\"accept\""), "{json}");
        assert!(json.contains("\"passed\":1"), "{json}");
    })
}
