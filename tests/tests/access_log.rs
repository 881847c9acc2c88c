//! Access logs: JSON lines to the file `Configuration.spec.logging` names, one per exchange,
//! flushed on shutdown.

use std::time::Duration;

use ringwall_tests::yaml::*;
use ringwall_tests::*;

#[test]
fn every_exchange_is_one_json_line_in_the_configured_file() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("hello");
        let logs = tempfile::tempdir().expect("log dir");
        let logging = format!(
            "logging:\n  outputs:\n    - name: access\n      type: file\n      parameters:\n        \
             path: {}\n        file: access.log\n  accessLogs:\n    outputs: [access]\n",
            logs.path().join("nested").display()
        );
        let config = documents(&[
            &api_to("http://127.0.0.1:0/api", &origin.url(), "/"),
            &configuration("logs", &logging),
        ]);
        let mut gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = Client::connect(gw.addr("api"));
        assert_eq!(client.get("/api/orders?id=\"7\"").status, 200);
        assert_eq!(client.get("/elsewhere").status, 404);
        gw.terminate();
        assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));

        let text =
            std::fs::read_to_string(logs.path().join("nested/access.log")).expect("the access log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let ok = lines[0];
        assert!(
            ok.starts_with("{\"time\":\"20") && ok.ends_with('}'),
            "{ok}"
        );
        for part in [
            "\"client\":\"127.0.0.1:",
            "\"method\":\"GET\"",
            "\"path\":\"/api/orders?id=\\\"7\\\"\"",
            "\"status\":200",
            "\"api\":\"api\"",
            "\"route\":\"up\"",
            "\"rejected_by\":null",
        ] {
            assert!(ok.contains(part), "{part} missing from {ok}");
        }
        assert!(
            ok.contains(&format!("\"upstream\":\"{}\"", origin.addr())),
            "{ok}"
        );
        let missed = lines[1];
        for part in [
            "\"path\":\"/elsewhere\"",
            "\"status\":404",
            "\"api\":null",
            "\"upstream\":null",
        ] {
            assert!(missed.contains(part), "{part} missing from {missed}");
        }
    })
}
