//! Routing: base paths, route rules (path regex, methods), route order, destination paths,
//! and top-level Services reached through `route` PolicyBindings.

use ringwall_tests::yaml::*;
use ringwall_tests::*;

/// An origin that answers with its name and the target it received.
fn named_origin(name: &'static str) -> Origin {
    Origin::start(move |req| Reply::ok(format!("{name} {} {}", req.method, req.path)))
}

fn request(gw: &Gateway, method: &str, path: &str) -> Response {
    Client::connect(gw.addr("api")).request(
        format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn base_path_is_stripped_and_destination_path_applied() {
    within(TEST_LIMIT, || {
        let origin = named_origin("up");
        let config = api_to("http://127.0.0.1:0/api", &origin.url(), "/anything/echo/");
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let resp = request(&gw, "GET", "/api/orders?x=1");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "up GET /anything/echo/orders?x=1");
    })
}

#[test]
fn service_path_comes_before_the_destination_path() {
    within(TEST_LIMIT, || {
        let origin = named_origin("svc");
        let files = [
            (
                "api.yaml",
                api_instance("api", "http://127.0.0.1:0/api", &[]),
            ),
            (
                "backend.yaml",
                documents(&[
                    &service("backend", &format!("{}/backend", origin.url())),
                    &route_binding("api-route", "api", "backend", Some("/v2/"), &[]),
                ]),
            ),
        ];
        let files: Vec<_> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let gw = Gateway::start(&files, &[]);

        let resp = request(&gw, "GET", "/api/orders?x=1");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "svc GET /backend/v2/orders?x=1");
    })
}

#[test]
fn rules_on_path_and_method_select_the_service() {
    within(TEST_LIMIT, || {
        let reads = named_origin("reads");
        let writes = named_origin("writes");
        let config = api_instance(
            "api",
            ANY_PORT,
            &[
                InlineService::new(
                    "reads",
                    &reads.url(),
                    vec![Route::all().rule(Rule::path("/items/.*").methods("GET"))],
                ),
                InlineService::new(
                    "writes",
                    &writes.url(),
                    vec![Route::all().rule(Rule::path("/items/.*").methods("POST|PUT"))],
                ),
            ],
        );
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        assert_eq!(request(&gw, "GET", "/items/1").text(), "reads GET /items/1");
        assert_eq!(
            request(&gw, "POST", "/items/2").text(),
            "writes POST /items/2"
        );
        assert_eq!(
            request(&gw, "PUT", "/items/3").text(),
            "writes PUT /items/3"
        );
        let delete = request(&gw, "DELETE", "/items/4");
        assert_eq!(delete.status, 404, "no rule allows DELETE: {delete:?}");
        let other = request(&gw, "GET", "/other");
        assert_eq!(other.status, 404, "no rule matches /other: {other:?}");
        assert_eq!(reads.request_count(), 1);
        assert_eq!(writes.request_count(), 2);
    })
}

#[test]
fn first_matching_route_wins() {
    within(TEST_LIMIT, || {
        let origin = named_origin("up");
        let config = api_instance(
            "api",
            ANY_PORT,
            &[InlineService::new(
                "up",
                &origin.url(),
                vec![
                    Route::all()
                        .rule(Rule::path("/first/.*"))
                        .destination("/one/"),
                    Route::all().rule(Rule::path("/.*")).destination("/two/"),
                ],
            )],
        );
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        // Both routes match /first/x; the first one listed wins.
        assert_eq!(
            request(&gw, "GET", "/first/x").text(),
            "up GET /one/first/x"
        );
        assert_eq!(request(&gw, "GET", "/second").text(), "up GET /two/second");
    })
}

#[test]
fn no_matching_route_is_404_without_reaching_an_origin() {
    within(TEST_LIMIT, || {
        let origin = named_origin("up");
        let config = api_instance(
            "api",
            ANY_PORT,
            &[InlineService::new(
                "up",
                &origin.url(),
                vec![Route::all().rule(Rule::path("/only/.*"))],
            )],
        );
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let resp = request(&gw, "GET", "/elsewhere");

        assert_eq!(resp.status, 404, "{resp:?}");
        assert!(
            resp.header("content-type")
                .unwrap_or("")
                .starts_with("text/plain"),
            "{resp:?}"
        );
        assert_eq!(origin.request_count(), 0);
        // The rule does match what it names.
        assert_eq!(request(&gw, "GET", "/only/here").status, 200);
    })
}

#[test]
fn path_outside_the_base_path_is_404() {
    within(TEST_LIMIT, || {
        let origin = named_origin("up");
        let config = api_to("http://127.0.0.1:0/api", &origin.url(), "/");
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let outside = request(&gw, "GET", "/other/orders");
        assert_eq!(outside.status, 404, "{outside:?}");
        // A base path is a whole segment: /apiary is not under /api.
        let prefix = request(&gw, "GET", "/apiary");
        assert_eq!(prefix.status, 404, "{prefix:?}");
        assert_eq!(origin.request_count(), 0);
        let inside = request(&gw, "GET", "/api/orders");
        assert_eq!(inside.text(), "up GET /orders");
    })
}

#[test]
fn longest_matching_base_path_selects_the_api_instance() {
    within(TEST_LIMIT, || {
        let v1 = named_origin("v1");
        let v2 = named_origin("v2");
        // Both instances must share one listener, so they name one concrete port: one the OS
        // just handed out (port 0 could mean a port per instance).
        let listen = format!("http://{}", free_port());
        let config = documents(&[
            &api_to(&format!("{listen}/api"), &v1.url(), "/"),
            &api_instance(
                "api-v2",
                &format!("{listen}/api/v2"),
                &[InlineService::new("up", &v2.url(), vec![Route::all()])],
            ),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        assert_eq!(
            gw.addr("api"),
            gw.addr("api-v2"),
            "one address, one listener"
        );

        assert_eq!(request(&gw, "GET", "/api/v2/x").text(), "v2 GET /x");
        assert_eq!(request(&gw, "GET", "/api/v1/x").text(), "v1 GET /v1/x");
        assert_eq!(request(&gw, "GET", "/api/v2").status, 200);
    })
}

#[test]
fn top_level_service_is_reached_through_a_route_binding() {
    within(TEST_LIMIT, || {
        let origin = named_origin("inventory");
        let files = [
            ("api.yaml", api_instance("api", ANY_PORT, &[])),
            (
                "inventory.yaml",
                documents(&[
                    &service("inventory", &origin.url()),
                    &route_binding("api-route", "api", "inventory", None, &[]),
                ]),
            ),
        ];
        let files: Vec<_> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let gw = Gateway::start(&files, &[]);

        let resp = request(&gw, "GET", "/stock/42?fresh=1");

        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), "inventory GET /stock/42?fresh=1");
        assert_eq!(
            origin.single_request().header("host"),
            Some(origin.addr().to_string().as_str())
        );
    })
}

#[test]
fn route_binding_rules_select_between_services() {
    within(TEST_LIMIT, || {
        let a = named_origin("a");
        let b = named_origin("b");
        let config = documents(&[
            &api_instance("api", ANY_PORT, &[]),
            &service("svc-a", &a.url()),
            &service("svc-b", &b.url()),
            &route_binding("to-a", "api", "svc-a", None, &[Rule::path("/a/.*")]),
            &route_binding("to-b", "api", "svc-b", None, &[Rule::path("/b/.*")]),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        assert_eq!(request(&gw, "GET", "/a/1").text(), "a GET /a/1");
        assert_eq!(request(&gw, "GET", "/b/2").text(), "b GET /b/2");
        assert_eq!(request(&gw, "GET", "/c/3").status, 404);
        assert_eq!((a.request_count(), b.request_count()), (1, 1));
    })
}
