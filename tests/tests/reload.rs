//! Reload on SIGHUP: a valid change takes effect on every worker without dropping a
//! connection; an invalid one is reported and the running configuration stays.

use std::time::Duration;

use ringwall_tests::yaml::*;
use ringwall_tests::*;

fn named_origin(name: &'static str) -> Origin {
    Origin::start(move |req| Reply::ok(format!("{name} {}", req.path)))
}

#[test]
fn a_route_change_applies_on_an_open_keep_alive_connection() {
    within(TEST_LIMIT, || {
        let (a, b) = (named_origin("a"), named_origin("b"));
        let mut gw = Gateway::start(&[("api.yaml", &simple_api(&a.url()))], &[]);
        let mut client = Client::connect(gw.addr("api"));
        assert_eq!(client.get("/x").text(), "a /x");

        let verdict = gw.reload_with("api.yaml", Some(&simple_api(&b.url())));
        assert_eq!(verdict, "reloaded generation=2");

        // The same connection, now routed by the new configuration.
        assert_eq!(client.get("/y").text(), "b /y");
        assert_eq!(Client::connect(gw.addr("api")).get("/z").text(), "b /z");
    })
}

#[test]
fn an_invalid_change_is_refused_and_the_old_configuration_stays() {
    within(TEST_LIMIT, || {
        let a = named_origin("a");
        let mut gw = Gateway::start(&[("api.yaml", &simple_api(&a.url()))], &[]);

        let broken = simple_api(&a.url()).replace("  services:", "  servces:");
        let verdict = gw.reload_with("api.yaml", Some(&broken));
        assert!(
            verdict.starts_with("reload-failed generation=2"),
            "{verdict}"
        );
        // The reload error names the file, line and field.
        let stderr = gw.wait_stderr("servces", Duration::from_secs(5));
        assert!(
            stderr.contains("api.yaml:7: ApiInstance/api: spec.servces"),
            "{stderr}"
        );
        assert_eq!(
            Client::connect(gw.addr("api")).get("/still").text(),
            "a /still"
        );

        // And a later valid change still goes through.
        let verdict = gw.reload_with("api.yaml", Some(&simple_api(&a.url())));
        assert_eq!(verdict, "reloaded generation=3");
    })
}

#[test]
fn moving_a_listener_is_refused_until_restart() {
    within(TEST_LIMIT, || {
        let a = named_origin("a");
        let mut gw = Gateway::start(&[("api.yaml", &simple_api(&a.url()))], &[]);
        let moved = api_to(&format!("http://{}", free_port()), &a.url(), "/");
        let verdict = gw.reload_with("api.yaml", Some(&moved));
        assert!(verdict.starts_with("reload-failed"), "{verdict}");
        gw.wait_stderr("on restart only", Duration::from_secs(5));
        assert_eq!(Client::connect(gw.addr("api")).get("/").text(), "a /");
    })
}
