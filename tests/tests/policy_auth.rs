//! The access policies through the built binary: `http-basic-authentication-flex`,
//! `client-id-enforcement` and `cors-flex`. Each test counts what reached the origin, so a
//! refusal or a preflight the gateway answers is shown never to leave it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ringwall_tests::yaml::{documents, simple_api, API_VERSION};
use ringwall_tests::*;

const CHALLENGE: &str = "Basic realm=\"ringwall\", charset=\"UTF-8\"";
const SITE: &str = "https://app.example.com";

/// A PolicyBinding of `policy` on ApiInstance `api`; `config` is YAML indented by four spaces.
fn binding(name: &str, policy: &str, order: u32, config: &str) -> String {
    format!(
        "apiVersion: {API_VERSION}\nkind: PolicyBinding\nmetadata:\n  name: {name}\nspec:\n  \
         targetRef:\n    name: api\n  policyRef:\n    name: {policy}\n  order: {order}\n  \
         config:\n{config}"
    )
}

/// A gateway in front of `origin` with the given bindings, plus extra files.
fn gateway(origin: &Origin, bindings: &[String], extra: &[(&str, &str)]) -> Gateway {
    let mut docs = vec![simple_api(&origin.url())];
    docs.extend_from_slice(bindings);
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let config = documents(&refs);
    let mut files = vec![("api.yaml", config.as_str())];
    files.extend_from_slice(extra);
    Gateway::start(&files, &["--no-watch"])
}

fn basic(user_password: &str) -> String {
    format!("Basic {}", STANDARD.encode(user_password))
}

/// `method /orders` with `headers`, on a fresh connection.
fn send(gw: &Gateway, method: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} /orders HTTP/1.1\r\nHost: gateway.test\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    client::one_shot(gw.addr("api"), raw.as_bytes())
}

#[track_caller]
fn assert_refused(resp: &Response, challenge: bool) {
    assert_eq!(resp.status, 401, "{resp:?}");
    let expected = challenge.then_some(CHALLENGE);
    assert_eq!(resp.header("www-authenticate"), expected, "{resp:?}");
}

#[test]
fn basic_authentication_lets_the_user_in_and_challenges_the_rest() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        let gw = gateway(
            &origin,
            &[binding(
                "basic",
                "http-basic-authentication-flex",
                1,
                "    username: chris\n    password: 'adm:in'\n",
            )],
            &[],
        );

        assert_refused(&send(&gw, "GET", &[]), true);
        assert_refused(
            &send(&gw, "GET", &[("Authorization", &basic("chris:admin"))]),
            true,
        );
        assert_refused(&send(&gw, "GET", &[("Authorization", "Bearer x")]), true);
        assert_eq!(
            origin.request_count(),
            0,
            "a refused request reached the origin"
        );

        let resp = send(&gw, "GET", &[("Authorization", &basic("chris:adm:in"))]);
        assert_eq!((resp.status, resp.text().as_str()), (200, "orders"));
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn client_ids_from_headers_are_checked_against_the_listed_clients() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        let gw = gateway(
            &origin,
            &[binding(
                "keys",
                "client-id-enforcement",
                1,
                "    clientSecretExpression: \"#[attributes.headers['client_secret']]\"\n    \
                 clients:\n      - {clientId: app-1, clientSecret: s1}\n      \
                 - {clientId: key-only}\n",
            )],
            &[],
        );

        for headers in [
            &[][..],
            &[("client_id", "app-1")][..],
            &[("client_id", "app-1"), ("client_secret", "nope")][..],
            &[("client_id", "stranger"), ("client_secret", "s1")][..],
        ] {
            assert_refused(&send(&gw, "GET", headers), false);
        }
        assert_eq!(
            origin.request_count(),
            0,
            "a refused request reached the origin"
        );

        let ok = send(
            &gw,
            "GET",
            &[("client_id", "app-1"), ("client_secret", "s1")],
        );
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(send(&gw, "GET", &[("client_id", "key-only")]).status, 200);
        assert_eq!(origin.request_count(), 2);
    })
}

#[test]
fn client_ids_from_basic_credentials_are_challenged_when_wrong() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        let gw = gateway(
            &origin,
            &[binding(
                "keys",
                "client-id-enforcement",
                1,
                "    credentialsOriginHasHttpBasicAuthenticationHeader: \
                 httpBasicAuthenticationHeader\n    \
                 clients: [{clientId: app-1, clientSecret: s1}]\n",
            )],
            &[],
        );

        assert_refused(&send(&gw, "GET", &[("client_id", "app-1")]), true);
        assert_refused(
            &send(&gw, "GET", &[("Authorization", &basic("app-1:s2"))]),
            true,
        );
        assert_eq!(origin.request_count(), 0);
        let ok = send(&gw, "GET", &[("Authorization", &basic("app-1:s1"))]);
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn a_clients_file_is_read_at_start_and_again_on_reload() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        let mut gw = gateway(
            &origin,
            &[binding(
                "keys",
                "client-id-enforcement",
                1,
                "    clientsFile: clients.json\n",
            )],
            &[(
                "clients.json",
                r#"[{"clientId": "first", "name": "First app"}]"#,
            )],
        );
        assert_eq!(send(&gw, "GET", &[("client_id", "first")]).status, 200);
        assert_refused(&send(&gw, "GET", &[("client_id", "second")]), false);

        // Only the clients file changes: the reload reads it again.
        let verdict = gw.reload_with("clients.json", Some("- clientId: second\n"));
        assert_eq!(verdict, "reloaded generation=2");
        assert_eq!(send(&gw, "GET", &[("client_id", "second")]).status, 200);
        assert_refused(&send(&gw, "GET", &[("client_id", "first")]), false);

        // A broken file is refused like any invalid configuration; the clients stay.
        let verdict = gw.reload_with("clients.json", Some("- clientId: [oops]\n"));
        assert!(verdict.starts_with("reload-failed"), "{verdict}");
        let stderr = gw.wait_stderr("clientsFile[0].clientId", std::time::Duration::from_secs(5));
        assert!(
            stderr.contains("clients.json:1: PolicyBinding/keys"),
            "{stderr}"
        );
        assert_eq!(send(&gw, "GET", &[("client_id", "second")]).status, 200);
        assert_eq!(origin.request_count(), 3);
    })
}

/// Restricted to [`SITE`]; GET and PUT, one extra request header, one exposed header.
const CORS_GROUPS: &str = "    publicResource: false\n    originGroups:\n      \
     - origins: ['https://app.example.com']\n        accessControlMaxAge: 600\n        \
       allowedMethods:\n          - {methodName: GET, allowed: true}\n          \
       - {methodName: PUT, allowed: true}\n        headers: [x-request-id]\n        \
       exposedHeaders: [x-total-count]\n";

fn preflight(gw: &Gateway, origin: &str, method: &str) -> Response {
    send(
        gw,
        "OPTIONS",
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "X-Request-Id"),
        ],
    )
}

#[test]
fn a_preflight_is_answered_by_the_gateway_itself() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        let gw = gateway(
            &origin,
            &[binding("cors", "cors-flex", 1, CORS_GROUPS)],
            &[],
        );

        let granted = preflight(&gw, SITE, "PUT");
        assert_eq!(granted.status, 200, "{granted:?}");
        assert!(granted.body.is_empty());
        for (name, value) in [
            ("access-control-allow-origin", SITE),
            ("access-control-allow-methods", "PUT"),
            ("access-control-allow-headers", "X-Request-Id"),
            ("access-control-max-age", "600"),
            ("vary", "Origin"),
        ] {
            assert_eq!(granted.header_all(name), [value], "{name}: {granted:?}");
        }
        assert_eq!(granted.header("access-control-allow-credentials"), None);

        // Another origin, or a method the group does not allow: answered, nothing granted.
        for resp in [
            preflight(&gw, "https://evil.example.net", "PUT"),
            preflight(&gw, SITE, "DELETE"),
        ] {
            assert_eq!(resp.status, 200, "{resp:?}");
            assert_eq!(resp.header("access-control-allow-origin"), None, "{resp:?}");
            assert_eq!(
                resp.header("access-control-allow-methods"),
                None,
                "{resp:?}"
            );
        }
        assert_eq!(origin.request_count(), 0, "a preflight reached the origin");
    })
}

#[test]
fn an_actual_request_gets_the_gateways_cors_headers_and_not_the_upstreams() {
    within(TEST_LIMIT, || {
        // An upstream with CORS headers of its own, more permissive than the policy.
        let origin = Origin::start(|_| {
            Reply::ok("orders")
                .header("Access-Control-Allow-Origin", "*")
                .header("Access-Control-Allow-Credentials", "true")
                .header("X-Total-Count", "3")
        });
        let gw = gateway(
            &origin,
            &[binding("cors", "cors-flex", 1, CORS_GROUPS)],
            &[],
        );

        let allowed = send(&gw, "GET", &[("Origin", SITE)]);
        assert_eq!(allowed.status, 200, "{allowed:?}");
        assert_eq!(allowed.header_all("access-control-allow-origin"), [SITE]);
        assert_eq!(
            allowed.header_all("access-control-expose-headers"),
            ["x-total-count"]
        );
        assert_eq!(allowed.header("access-control-allow-credentials"), None);
        assert_eq!(allowed.header("x-total-count"), Some("3"));
        assert_eq!(allowed.header_all("vary"), ["Origin"]);

        // Another origin: served, but without a grant the browser keeps it from the page.
        let other = send(&gw, "GET", &[("Origin", "https://evil.example.net")]);
        assert_eq!(other.status, 200, "{other:?}");
        assert_eq!(
            other.header("access-control-allow-origin"),
            None,
            "{other:?}"
        );
        assert_eq!(origin.request_count(), 2);
    })
}

#[test]
fn cors_answers_preflights_before_authentication_and_labels_its_refusals() {
    within(TEST_LIMIT, || {
        let origin = Origin::ok("orders");
        // cors-flex is bound with the larger order and still runs first.
        let gw = gateway(
            &origin,
            &[
                binding(
                    "basic",
                    "http-basic-authentication-flex",
                    1,
                    "    username: u\n    password: p\n",
                ),
                binding("cors", "cors-flex", 90, CORS_GROUPS),
            ],
            &[],
        );

        let granted = preflight(&gw, SITE, "GET");
        assert_eq!(granted.status, 200, "{granted:?}");
        assert_eq!(granted.header("access-control-allow-origin"), Some(SITE));

        let refused = send(&gw, "GET", &[("Origin", SITE)]);
        assert_refused(&refused, true);
        assert_eq!(
            refused.header("access-control-allow-origin"),
            Some(SITE),
            "the page could not read its 401: {refused:?}"
        );
        assert_eq!(origin.request_count(), 0);

        let ok = send(
            &gw,
            "GET",
            &[("Origin", SITE), ("Authorization", &basic("u:p"))],
        );
        assert_eq!(ok.status, 200, "{ok:?}");
        assert_eq!(ok.header("access-control-allow-origin"), Some(SITE));
        assert_eq!(origin.request_count(), 1);
    })
}
