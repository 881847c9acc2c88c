//! TLS end to end: `https://` ApiInstances terminating TLS with the `tls` policy (SNI, ALPN,
//! versions, client certificates, handshake timeouts, certificate reload), and `https://`
//! Services reached through `tls-outbound` (verification, client certificates, pooling and
//! resumption). Certificates are made per test by [`Pki`]; the clients are rustls (and curl),
//! the TLS origins rustls.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ringwall_tests::tls::*;
use ringwall_tests::yaml::*;
use ringwall_tests::*;
use rustls::AlertDescription;

const CLI_LIMIT: Duration = Duration::from_secs(10);
const FAILURES: &str = "ringwall_tls_handshake_failures_total";
const HANDSHAKES: &str = "ringwall_tls_handshakes_total";

/// ApiInstance `name` at `address` sending everything to `upstream`, and its `tls` binding
/// with `tls` (a policy `config`, YAML at column 0).
fn tls_api(name: &str, address: &str, upstream: &str, tls: &str) -> String {
    documents(&[
        &api_instance(
            name,
            address,
            &[InlineService::new("up", upstream, vec![Route::all()])],
        ),
        &policy_binding(&format!("{name}-tls"), name, "tls", None, tls, &[]),
    ])
}

/// A plain-HTTP ApiInstance `name` routed to top-level Service `svc` at `address`,
/// which `tls-outbound` configures with `outbound` (YAML at column 0) unless it is `None`.
fn api_to_tls_service(name: &str, svc: &str, address: &str, outbound: Option<&str>) -> String {
    let mut docs = vec![
        api_instance(name, ANY_PORT, &[]),
        service(svc, address),
        route_binding(&format!("{name}-route"), name, svc, None, &[]),
    ];
    if let Some(outbound) = outbound {
        docs.push(outbound_binding(&format!("{svc}-tls"), svc, outbound));
    }
    documents(&docs.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `trustedCA` naming `pki`'s CA file.
fn trusted(pki: &Pki) -> String {
    format!("trustedCA: '{}'\n", pki.ca_path().display())
}

/// A `Configuration` writing the access log to `dir/access.log`.
fn access_log(dir: &std::path::Path) -> String {
    configuration(
        "logs",
        &format!(
            "logging:\n  outputs:\n    - name: access\n      type: file\n      parameters:\n        \
             path: {}\n        file: access.log\n  accessLogs:\n    outputs: [access]\n",
            dir.display()
        ),
    )
}

/// Stops the gateway (which flushes the access log) and returns the log's lines.
fn access_lines(mut gw: Gateway, dir: &std::path::Path) -> Vec<String> {
    gw.terminate();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let text = std::fs::read_to_string(dir.join("access.log")).expect("the access log");
    text.lines().map(str::to_string).collect()
}

#[track_caller]
fn assert_fields(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{part} missing from {line}");
    }
}

/// Handshake failures of the client side with `reason`, waiting until there are `want`.
fn client_failures(gw: &Gateway, reason: &str, want: f64) -> f64 {
    gw.metric_until(FAILURES, &[("side", "client"), ("reason", reason)], |v| {
        v >= want
    })
}

/// Plain `GET path` on a fresh connection.
fn plain_get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

// === termination: certificates by SNI ===

#[test]
fn sni_picks_each_apis_certificate_and_other_names_get_the_first() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let (a, b) = (
            pki.leaf("a", &["a.test"], false),
            pki.leaf("b", &["b.test"], false),
        );
        let wild = pki.leaf("wild", &["*.wild.test"], false);
        let origin = Origin::echo_path();
        let port = free_port().port();
        // b's files sit beside the YAML and are named relative to it.
        let b_tls = "certificate:\n  key: b.key\n  crt: b.crt\n";
        let config = documents(&[
            &tls_api(
                "a",
                &format!("https://127.0.0.1:{port}/a"),
                &origin.url(),
                &a.certificate_paths(),
            ),
            &tls_api(
                "b",
                &format!("https://127.0.0.1:{port}/b"),
                &origin.url(),
                b_tls,
            ),
            &tls_api(
                "wild",
                &format!("https://127.0.0.1:{port}/w"),
                &origin.url(),
                &wild.certificate_paths(),
            ),
        ]);
        let gw = Gateway::start(
            &[
                ("apis.yaml", &config),
                ("b.key", &b.key_pem),
                ("b.crt", &b.crt_pem),
            ],
            &[],
        );
        let addr = gw.addr("a");
        assert_eq!(gw.addr("b"), addr, "{:?}", gw.listening_lines());

        let mut to_a = TlsClient::new(&pki, "a.test").client(addr);
        assert_eq!(to_a.served_certificate(), a.der(), "SNI a.test");
        assert_eq!(to_a.get_from("a.test", "/a/one").text(), "/one");
        let mut to_b = TlsClient::new(&pki, "b.test").client(addr);
        assert_eq!(to_b.served_certificate(), b.der(), "SNI b.test");
        assert_eq!(to_b.get_from("b.test", "/b/two").text(), "/two");
        let to_wild = TlsClient::new(&pki, "x.wild.test").client(addr);
        assert_eq!(to_wild.served_certificate(), wild.der(), "SNI x.wild.test");

        // No SNI (and no ALPN, as a bare client sends): the first API's certificate.
        let bare = TlsClient::new(&pki, "a.test").without_sni().alpn(&[]);
        let mut bare = bare.client(addr);
        assert_eq!(bare.served_certificate(), a.der(), "no SNI");
        assert_eq!(bare.get_from("a.test", "/a/three").status, 200);
        let unknown = TlsClient::trusting_anything("c.test").client(addr);
        assert_eq!(unknown.served_certificate(), a.der(), "SNI c.test");

        let requests = origin.requests();
        assert_eq!(requests.len(), 3);
        for req in &requests {
            assert_eq!(req.header("x-forwarded-proto"), Some("https"), "{req:?}");
        }
        let handshakes = [("side", "client"), ("version", "1.3")];
        let counted = gw.metric_until(HANDSHAKES, &handshakes, |v| v >= 5.0);
        assert_eq!(counted, 5.0);
    })
}

#[test]
fn unknown_server_names_can_be_refused() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let (a, b) = (
            pki.leaf("a", &["a.test"], false),
            pki.leaf("b", &["b.test"], false),
        );
        let origin = Origin::echo_path();
        let port = free_port().port();
        let refuse = "unknownServerName: refuse\n";
        let config = documents(&[
            &tls_api(
                "a",
                &format!("https://127.0.0.1:{port}/a"),
                &origin.url(),
                &(a.certificate_paths() + refuse),
            ),
            &tls_api(
                "b",
                &format!("https://127.0.0.1:{port}/b"),
                &origin.url(),
                &(b.certificate_paths() + refuse),
            ),
        ]);
        let gw = Gateway::start(&[("apis.yaml", &config)], &[]);
        let addr = gw.addr("a");

        let refused = TlsClient::trusting_anything("c.test").get(addr, "/a/x");
        let err = refused.expect_err("an unknown name is refused");
        assert!(alert(&err).is_some(), "want a handshake alert, got {err}");
        assert_eq!(client_failures(&gw, "unknown_server_name", 1.0), 1.0);
        // Known names still get their certificates.
        let to_b = TlsClient::new(&pki, "b.test").client(addr);
        assert_eq!(to_b.served_certificate(), b.der());
        assert_eq!(
            TlsClient::new(&pki, "a.test")
                .get(addr, "/a/y")
                .expect("a.test")
                .text(),
            "/y"
        );
        assert_eq!(origin.request_count(), 1);
    })
}

// === termination: ALPN and versions ===

#[test]
fn alpn_negotiates_http11_and_refuses_a_client_that_offers_only_h2() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::echo_path();
        // h2 is dropped (the proxy speaks HTTP/1.1), with a warning.
        let tls = a.certificate_paths() + "alpn: [h2, http/1.1]\n";
        let config = tls_api("a", "https://127.0.0.1:0", &origin.url(), &tls);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let addr = gw.addr("a");
        let stderr = gw.wait_stderr("spec.config.alpn", Duration::from_secs(5));
        let warning = stderr.lines().find(|l| l.contains("spec.config.alpn"));
        assert!(warning.is_some_and(|w| w.contains("h2")), "{stderr}");

        let h2 = TlsClient::new(&pki, "a.test").alpn(&["h2"]).connect(addr);
        let err = h2.err().expect("a client offering only h2 is refused");
        assert_eq!(
            alert(&err),
            Some(AlertDescription::NoApplicationProtocol),
            "{err}"
        );
        assert_eq!(client_failures(&gw, "no_shared_alpn", 1.0), 1.0);

        let both = TlsClient::new(&pki, "a.test").alpn(&["h2", "http/1.1"]);
        let mut both = both.client(addr);
        assert_eq!(both.alpn().as_deref(), Some("http/1.1"));
        assert_eq!(both.get_from("a.test", "/h1").text(), "/h1");
        let mut none = TlsClient::new(&pki, "a.test").alpn(&[]).client(addr);
        assert_eq!(none.alpn(), None);
        assert_eq!(none.get_from("a.test", "/none").status, 200);
    })
}

#[test]
fn tls12_and_tls13_are_each_negotiated_and_logged() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::echo_path();
        let logs = tempfile::tempdir().expect("log dir");
        let config = documents(&[
            &tls_api(
                "a",
                "https://127.0.0.1:0",
                &origin.url(),
                &a.certificate_paths(),
            ),
            &access_log(logs.path()),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let addr = gw.addr("a");

        for version in ["1.2", "1.3"] {
            let mut client = TlsClient::new(&pki, "a.test").only(version).client(addr);
            assert_eq!(client.version(), version);
            let path = format!("/v{version}");
            assert_eq!(client.get_from("a.test", &path).text(), path);
        }
        for version in ["1.2", "1.3"] {
            let labels = [("side", "client"), ("version", version)];
            assert_eq!(gw.metric_until(HANDSHAKES, &labels, |v| v >= 1.0), 1.0);
        }

        let lines = access_lines(gw, logs.path());
        assert_eq!(lines.len(), 2, "{lines:?}");
        // Each worker writes its own lines: find each exchange by its path.
        for version in ["1.2", "1.3"] {
            let path = format!("\"path\":\"/v{version}\"");
            let line = lines.iter().find(|l| l.contains(&path));
            let line = line.unwrap_or_else(|| panic!("no line for {path}: {lines:?}"));
            let tls_version = format!("\"tls_version\":\"{version}\"");
            assert_fields(line, &[&tls_version, "\"tls_sni\":\"a.test\""]);
        }
    })
}

#[test]
fn version_bounds_refuse_clients_outside_them() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::echo_path();
        let config = documents(&[
            &tls_api(
                "new",
                "https://127.0.0.1:0",
                &origin.url(),
                &(a.certificate_paths() + "minversion: \"1.3\"\n"),
            ),
            &tls_api(
                "old",
                "https://127.0.0.1:0",
                &origin.url(),
                &(a.certificate_paths() + "maxversion: \"1.2\"\n"),
            ),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let client = TlsClient::new(&pki, "a.test");

        let err = client.clone().only("1.2").connect(gw.addr("new"));
        let err = err.err().expect("minversion 1.3 refuses a TLS 1.2 client");
        assert_eq!(
            alert(&err),
            Some(AlertDescription::ProtocolVersion),
            "{err}"
        );
        let ok = client.clone().only("1.3").get(gw.addr("new"), "/n");
        assert_eq!(ok.expect("TLS 1.3 under minversion 1.3").status, 200);

        let err = client.clone().only("1.3").connect(gw.addr("old"));
        let err = err.err().expect("maxversion 1.2 refuses a TLS 1.3 client");
        assert_eq!(
            alert(&err),
            Some(AlertDescription::ProtocolVersion),
            "{err}"
        );
        let old = client.client(gw.addr("old"));
        assert_eq!(old.version(), "1.2", "maxversion 1.2 negotiates 1.2");

        assert_eq!(client_failures(&gw, "protocol_version", 2.0), 2.0);
    })
}

#[test]
fn ciphers_restrict_the_suites_of_the_versions_they_name() {
    within(TEST_LIMIT, || {
        use rustls::CipherSuite::*;
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::echo_path();
        // A TLS 1.3 suite by its IANA name: TLS 1.2 keeps every suite.
        let tls = a.certificate_paths() + "ciphers: [TLS_CHACHA20_POLY1305_SHA256]\n";
        let config = tls_api("a", "https://127.0.0.1:0", &origin.url(), &tls);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let addr = gw.addr("a");
        let client = TlsClient::new(&pki, "a.test").only("1.3");

        let aes = client
            .clone()
            .suites(&[TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]);
        let err = aes.connect(addr).err().expect("no suite in common");
        assert_eq!(
            alert(&err),
            Some(AlertDescription::HandshakeFailure),
            "{err}"
        );
        assert_eq!(client_failures(&gw, "no_shared_cipher", 1.0), 1.0);

        let mut chacha = client.client(addr);
        assert_eq!(chacha.cipher_suite(), Some(TLS13_CHACHA20_POLY1305_SHA256));
        assert_eq!(chacha.get_from("a.test", "/c").text(), "/c");
        let old = TlsClient::new(&pki, "a.test").only("1.2");
        let old = old.suites(&[TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]);
        assert_eq!(
            old.get(addr, "/o")
                .expect("TLS 1.2 keeps its suites")
                .text(),
            "/o"
        );
    })
}

// === termination: client certificates ===

/// ApiInstance `a` verifying client certificates against `pki` (and requiring one when
/// `require`), with the verified subject injected as `x-client-subject`, and `extra`
/// documents.
fn mtls_config(pki: &Pki, cert: &Leaf, upstream: &str, require: bool, extra: &[&str]) -> String {
    let tls = format!(
        "{}requireClientCertificate: {require}\n{}",
        cert.certificate_paths(),
        pem_field("", "trustedCA", &pki.ca_pem())
    );
    let inject = policy_binding(
        "subject",
        "a",
        "header-injection-flex",
        None,
        "inboundHeaders:\n  - {key: x-client-subject, value: \"#[attributes.clientCertificate.subjectDN]\"}\n",
        &[],
    );
    let mut docs = vec![tls_api("a", "https://127.0.0.1:0", upstream, &tls), inject];
    docs.extend(extra.iter().map(|d| d.to_string()));
    documents(&docs.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_verified_client_subject_reaches_policies_and_the_access_log() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let alice = pki.leaf("alice", &[], true);
        let origin = Origin::echo_path();
        let logs = tempfile::tempdir().expect("log dir");
        let config = mtls_config(&pki, &a, &origin.url(), true, &[&access_log(logs.path())]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let client = TlsClient::new(&pki, "a.test").identity(&alice);
        let resp = client.get(gw.addr("a"), "/who").expect("alice is let in");
        assert_eq!(resp.status, 200, "{}", resp.text());
        let req = origin.single_request();
        assert_eq!(req.header("x-client-subject"), Some("CN=alice"), "{req:?}");

        let lines = access_lines(gw, logs.path());
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_fields(
            &lines[0],
            &[
                "\"tls_client_subject\":\"CN=alice\"",
                "\"tls_version\":\"1.3\"",
                "\"tls_sni\":\"a.test\"",
            ],
        );
    })
}

#[test]
fn a_missing_or_foreign_client_certificate_is_refused() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let alice = pki.leaf("alice", &[], true);
        let other = Pki::new("another CA");
        let mallory = other.leaf("mallory", &[], true);
        let origin = Origin::echo_path();
        let gw = Gateway::start(
            &[("api.yaml", &mtls_config(&pki, &a, &origin.url(), true, &[]))],
            &[],
        );
        let addr = gw.addr("a");
        let client = TlsClient::new(&pki, "a.test");

        let none = client.get(addr, "/anonymous");
        let err = none.expect_err("no client certificate is refused");
        assert_eq!(
            alert(&err),
            Some(AlertDescription::CertificateRequired),
            "{err}"
        );
        assert_eq!(client_failures(&gw, "certificate_required", 1.0), 1.0);

        let foreign = client.clone().identity(&mallory).get(addr, "/mallory");
        let err = foreign.expect_err("a certificate from another CA is refused");
        assert!(
            matches!(
                alert(&err),
                Some(AlertDescription::UnknownCA | AlertDescription::BadCertificate)
            ),
            "{err}"
        );
        let labels = |reason| [("side", "client"), ("reason", reason)];
        let unknown_ca = gw.metric_until(FAILURES, &labels("unknown_ca"), |v| v >= 1.0);
        let bad_certificate = metric(&gw.metrics(), FAILURES, &labels("bad_certificate"));
        assert_eq!(unknown_ca + bad_certificate.unwrap_or(0.0), 1.0);

        assert_eq!(origin.request_count(), 0);
        let good = client.identity(&alice).get(addr, "/alice");
        assert_eq!(good.expect("alice is let in").status, 200);
    })
}

#[test]
fn an_optional_client_certificate_is_verified_when_presented() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let alice = pki.leaf("alice", &[], true);
        let mallory = Pki::new("another CA").leaf("mallory", &[], true);
        let origin = Origin::echo_path();
        let config = mtls_config(&pki, &a, &origin.url(), false, &[]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let addr = gw.addr("a");
        let client = TlsClient::new(&pki, "a.test");

        let anonymous = client.get(addr, "/anonymous");
        assert_eq!(anonymous.expect("no certificate is fine").status, 200);
        let alice = client.clone().identity(&alice).get(addr, "/alice");
        assert_eq!(alice.expect("alice is let in").status, 200);
        let requests = origin.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].header("x-client-subject"), Some("CN=alice"));

        let foreign = client.identity(&mallory).get(addr, "/mallory");
        foreign.expect_err("a certificate that is presented is verified");
        assert_eq!(origin.request_count(), 2);
    })
}

// === upstreams ===

#[test]
fn upstream_tls_is_verified_for_the_service_host_or_the_sni_name() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let cert = pki.leaf("origin", &["localhost", "origin.test"], false);
        let origin = TlsOrigin::start(&cert, None, |req| Reply::ok(req.path.clone()));
        let sni = format!("{}sni: origin.test\n", trusted(&pki));
        // An IP address is verified as one, and sent as no SNI at all.
        let ip_cert = pki.leaf("ip-origin", &["127.0.0.1"], false);
        let ip_origin = TlsOrigin::start(&ip_cert, None, |req| Reply::ok(req.path.clone()));
        let old = format!("{}maxversion: \"1.2\"\n", trusted(&pki));
        let config = documents(&[
            &api_to_tls_service("ip", "by-ip", &ip_origin.https("127.0.0.1"), Some(&old)),
            &api_to_tls_service(
                "host",
                "by-host",
                &origin.https("localhost"),
                Some(&trusted(&pki)),
            ),
            // No IP in the certificate: this verifies only if the sni name is what is checked.
            &api_to_tls_service("named", "by-sni", &origin.https("127.0.0.1"), Some(&sni)),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let resp = plain_get(gw.addr("host"), "/by-host");
        assert_eq!((resp.status, resp.text().as_str()), (200, "/by-host"));
        let resp = plain_get(gw.addr("named"), "/by-sni");
        assert_eq!((resp.status, resp.text().as_str()), (200, "/by-sni"));

        let seen = origin.negotiated();
        let names: Vec<_> = seen.iter().map(|n| n.sni.as_deref()).collect();
        assert_eq!(names, [Some("localhost"), Some("origin.test")], "{seen:?}");
        assert!(seen.iter().all(|n| n.client_certificate.is_none()));

        let resp = plain_get(gw.addr("ip"), "/by-ip");
        assert_eq!((resp.status, resp.text().as_str()), (200, "/by-ip"));
        let seen = ip_origin.negotiated();
        assert_eq!(seen.len(), 1, "{:?}", ip_origin.handshakes());
        assert_eq!((seen[0].sni.as_deref(), seen[0].version), (None, "1.2"));
    })
}

#[test]
fn skip_validation_reaches_a_self_signed_origin() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("some CA");
        let cert = pki.self_signed("selfish", &["localhost"]);
        let origin = TlsOrigin::start(&cert, None, |req| Reply::ok(req.path.clone()));
        let config = documents(&[
            &api_to_tls_service(
                "skip",
                "skipping",
                &origin.https("localhost"),
                Some("skipValidation: true\n"),
            ),
            &api_to_tls_service(
                "check",
                "checking",
                &origin.https("localhost"),
                Some(&trusted(&pki)),
            ),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let resp = plain_get(gw.addr("skip"), "/skipped");
        assert_eq!((resp.status, resp.text().as_str()), (200, "/skipped"));
        // The same origin, verified: its certificate is vouched for by no CA.
        assert_eq!(plain_get(gw.addr("check"), "/checked").status, 502);
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn an_untrusted_upstream_certificate_is_a_502() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let other = Pki::new("another CA");
        let cert = pki.leaf("origin", &["localhost"], false);
        let origin = TlsOrigin::start(&cert, None, |_| Reply::ok("reached"));
        let config = documents(&[
            &api_to_tls_service(
                "wrong",
                "wrong-ca",
                &origin.https("localhost"),
                Some(&trusted(&other)),
            ),
            // No tls-outbound: the system's CAs, which know nothing of the test CA.
            &api_to_tls_service("system", "system-ca", &origin.https("localhost"), None),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        assert_eq!(plain_get(gw.addr("wrong"), "/").status, 502);
        assert_eq!(plain_get(gw.addr("system"), "/").status, 502);
        assert_eq!(origin.request_count(), 0);
        assert!(origin.negotiated().is_empty(), "{:?}", origin.handshakes());
        // Both are the gateway refusing an unknown issuer (a retry may count more).
        let labels = [("side", "upstream"), ("reason", "unknown_ca")];
        let unknown_ca = gw.metric_until(FAILURES, &labels, |v| v >= 2.0);
        assert!(unknown_ca >= 2.0, "{}", gw.metrics());
    })
}

#[test]
fn upstream_mtls_presents_the_configured_client_certificate() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let cert = pki.leaf("origin", &["localhost"], false);
        let gateway = pki.leaf("gateway", &[], true);
        let origin = TlsOrigin::start(&cert, Some(&pki), |_| Reply::ok("mutual"));
        let with = format!("{}{}", trusted(&pki), gateway.certificate_paths());
        let config = documents(&[
            &api_to_tls_service("with", "with-cert", &origin.https("localhost"), Some(&with)),
            &api_to_tls_service(
                "without",
                "no-cert",
                &origin.https("localhost"),
                Some(&trusted(&pki)),
            ),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let resp = plain_get(gw.addr("with"), "/");
        assert_eq!((resp.status, resp.text().as_str()), (200, "mutual"));
        let seen = origin.negotiated();
        assert_eq!(seen.len(), 1, "{:?}", origin.handshakes());
        assert_eq!(seen[0].client_certificate.as_ref(), Some(&gateway.der()));

        assert_eq!(plain_get(gw.addr("without"), "/").status, 502);
        assert_eq!(origin.request_count(), 1);
    })
}

#[test]
fn upstream_tls_connections_are_pooled_and_sessions_resumed() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let cert = pki.leaf("origin", &["localhost"], false);
        let origin = TlsOrigin::start(&cert, None, |req| {
            let reply = Reply::ok(req.path.clone());
            // Ends this connection, emptying the gateway's pool.
            if req.path == "/close" {
                reply.header("Connection", "close")
            } else {
                reply
            }
        });
        let config = api_to_tls_service(
            "api",
            "svc",
            &origin.https("localhost"),
            Some(&trusted(&pki)),
        );
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        // One client connection, so one worker (and its pool) serves every request.
        let mut client = Client::connect(gw.addr("api"));

        for i in 0..3 {
            assert_eq!(client.get(&format!("/{i}")).text(), format!("/{i}"));
        }
        assert_eq!(
            origin.connections(),
            1,
            "keep-alive over TLS reuses one connection"
        );
        assert_eq!(client.get("/close").text(), "/close");
        assert_eq!(client.get("/again").text(), "/again");
        assert_eq!(origin.connections(), 2);

        let seen = origin.negotiated();
        let resumed: Vec<bool> = seen.iter().map(|n| n.resumed).collect();
        assert_eq!(
            resumed,
            [false, true],
            "the second connection resumes: {seen:?}"
        );
    })
}

#[test]
fn a_reload_keeps_pooled_upstream_tls_connections_unless_their_settings_change() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let cert = pki.leaf("origin", &["localhost"], false);
        let origin = TlsOrigin::start(&cert, None, |req| Reply::ok(req.path.clone()));
        let with = |outbound: &str| {
            api_to_tls_service("api", "svc", &origin.https("localhost"), Some(outbound))
        };
        let config = with(&trusted(&pki));
        let mut gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = Client::connect(gw.addr("api"));
        assert_eq!(client.get("/1").text(), "/1");

        // A reload that leaves the Service alone keeps its pooled connection.
        let timeouts = configuration("timeouts", "timeouts:\n  streamIdleSeconds: 60\n");
        let verdict = gw.save("other.yaml", &timeouts);
        assert!(verdict.starts_with("reloaded "), "{verdict}");
        assert_eq!(client.get("/2").text(), "/2");
        assert_eq!(
            origin.connections(),
            1,
            "the pooled connection survived the reload"
        );

        // New TLS settings for the Service: a new connection made with them.
        let verdict = gw.save(
            "api.yaml",
            &with(&format!("{}alpn: [http/1.1]\n", trusted(&pki))),
        );
        assert!(verdict.starts_with("reloaded "), "{verdict}");
        assert_eq!(client.get("/3").text(), "/3");
        assert_eq!(origin.connections(), 2);
        let alpn: Vec<_> = origin.negotiated().iter().map(|n| n.alpn.clone()).collect();
        assert_eq!(alpn, [None, Some("http/1.1".to_owned())]);
    })
}

#[test]
fn an_upstream_tls_connection_closed_after_answering_is_not_reused() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let cert = pki.leaf("origin", &["localhost"], false);
        // Every connection ends after one answer, with close_notify and no header saying so.
        let origin = TlsOrigin::start(&cert, None, |req| {
            Reply::ok(format!("{} {} {}", req.method, req.path, req.body.len())).then_close()
        });
        let outbound = trusted(&pki);
        let config = api_to_tls_service("api", "svc", &origin.https("localhost"), Some(&outbound));
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = Client::connect(gw.addr("api"));

        let exchanges = [
            ("GET /1 HTTP/1.1\r\nHost: gw\r\n\r\n", "GET /1 0"),
            // Not replayable: only a connection known to be open may carry it.
            (
                "POST /2 HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nbody",
                "POST /2 4",
            ),
            ("GET /3 HTTP/1.1\r\nHost: gw\r\n\r\n", "GET /3 0"),
        ];
        for (i, (raw, want)) in exchanges.into_iter().enumerate() {
            let resp = client.request(raw.as_bytes());
            assert_eq!((resp.status, resp.text().as_str()), (200, want));
            // The close is on its way to the gateway before the next request leaves.
            let deadline = Instant::now() + Duration::from_secs(5);
            while origin.closed() <= i {
                assert!(Instant::now() < deadline, "the origin never closed");
                // Poll interval only: what is awaited is the origin's close.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert_eq!(origin.connections(), 3);
    })
}

#[test]
fn a_stalled_upstream_handshake_is_a_504_after_the_connect_timeout() {
    within(TEST_LIMIT, || {
        // Connections complete in the kernel's backlog, and the ClientHello is never answered.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let outbound = "skipValidation: true\n";
        let config = documents(&[
            &api_to_tls_service(
                "api",
                "svc",
                &format!("https://localhost:{port}"),
                Some(outbound),
            ),
            &configuration("timeouts", "timeouts:\n  upstreamConnectSeconds: 0.5\n"),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);

        let started = Instant::now();
        assert_eq!(plain_get(gw.addr("api"), "/").status, 504);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(5),
            "answered after {took:?} with a 0.5 s connect timeout"
        );
        let labels = [("side", "upstream"), ("reason", "timeout")];
        assert_eq!(gw.metric_until(FAILURES, &labels, |v| v >= 1.0), 1.0);
    })
}

// === reload, timeouts, real clients, big bodies ===

#[test]
fn clients_resume_their_sessions_across_connections_and_reloads() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::echo_path();
        let address = format!("https://127.0.0.1:{}", free_port().port());
        let config = |base: &str| {
            tls_api(
                "a",
                &format!("{address}{base}"),
                &origin.url(),
                &a.certificate_paths(),
            )
        };
        let mut gw = Gateway::start(&[("api.yaml", &config(""))], &[]);
        let addr = gw.addr("a");
        let mut base = String::new();

        for version in ["1.2", "1.3"] {
            let client = TlsClient::new(&pki, "a.test").only(version);
            // One configuration, so one session cache, as a browser keeps.
            let sessions = client.config();
            let mut kinds = Vec::new();
            for i in 0..4 {
                if i == 2 {
                    base = format!("/v{version}");
                    let verdict = gw.save("api.yaml", &config(&base));
                    assert!(verdict.starts_with("reloaded "), "{verdict}");
                }
                let mut conn = client
                    .connect_with(sessions.clone(), addr)
                    .expect("handshake");
                // TLS 1.3 tickets come after the handshake: a response reads them in.
                assert_eq!(conn.get_from("a.test", &format!("{base}/x")).text(), "/x");
                kinds.push(conn.tls().handshake_kind());
            }
            use rustls::HandshakeKind::{Full, Resumed};
            // Connections may land on either worker; the second after the reload too.
            assert_eq!(
                kinds,
                [Some(Full), Some(Resumed), Some(Resumed), Some(Resumed)],
                "TLS {version}"
            );
        }
    })
}

#[test]
fn a_new_certificate_reaches_new_connections_and_live_ones_keep_working() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let (v1, v2) = (
            pki.leaf("v1", &["a.test"], false),
            pki.leaf("v2", &["a.test"], false),
        );
        let origin = Origin::echo_path();
        let address = format!("https://127.0.0.1:{}", free_port().port());
        let config =
            |leaf: &Leaf| tls_api("a", &address, &origin.url(), &leaf.certificate_inline());
        let mut gw = Gateway::start(&[("api.yaml", &config(&v1))], &[]);
        let addr = gw.addr("a");
        let client = TlsClient::new(&pki, "a.test");

        let mut live = client.client(addr);
        assert_eq!(live.served_certificate(), v1.der());
        assert_eq!(live.get_from("a.test", "/before").status, 200);

        assert_eq!(gw.save("api.yaml", &config(&v2)), "reloaded generation=2");

        let resp = live.get_from("a.test", "/after");
        assert_eq!((resp.status, resp.text().as_str()), (200, "/after"));
        let fresh = client.client(addr);
        assert_eq!(
            fresh.served_certificate(),
            v2.der(),
            "a new connection after the reload"
        );
    })
}

#[test]
fn certificate_files_replaced_on_disk_are_read_again_on_sighup() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let (v1, v2) = (
            pki.leaf("v1", &["a.test"], false),
            pki.leaf("v2", &["a.test"], false),
        );
        let origin = Origin::echo_path();
        let address = format!("https://127.0.0.1:{}", free_port().port());
        // The YAML stays the same: only the files it names change, as a certificate
        // rotation leaves them.
        let tls = "certificate:\n  key: a.key\n  crt: a.crt\n";
        let config = tls_api("a", &address, &origin.url(), tls);
        let files = [
            ("api.yaml", config.as_str()),
            ("a.key", &v1.key_pem),
            ("a.crt", &v1.crt_pem),
        ];
        let mut gw = Gateway::start(&files, &["--no-watch"]);
        let addr = gw.addr("a");
        let client = TlsClient::new(&pki, "a.test");
        let mut live = client.client(addr);
        assert_eq!(live.served_certificate(), v1.der());

        gw.replace_file("a.key", &v2.key_pem);
        gw.replace_file("a.crt", &v2.crt_pem);
        assert_eq!(
            gw.reload_with("api.yaml", Some(&config)),
            "reloaded generation=2"
        );
        assert_eq!(client.client(addr).served_certificate(), v2.der());
        assert_eq!(live.get_from("a.test", "/live").text(), "/live");
    })
}

/// Reads from `stream` until the gateway closes it and returns how long that took; panics
/// if it sends anything but a TLS alert, or stays open `limit`.
fn closed_after(mut stream: &TcpStream, since: Instant, limit: Duration) -> Duration {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            // An alert record (type 21) before the close is fine.
            Ok(n) if buf[0] == 21 => assert!(n <= 7 + 64, "{:?}", &buf[..n]),
            Ok(n) => panic!("the gateway sent {:?} instead of closing", &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection was still open after {limit:?}")
            }
            Err(_) => return since.elapsed(),
        }
    }
}

#[test]
fn a_stalled_handshake_is_closed_after_the_configured_timeout() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::echo_path();
        let config = documents(&[
            &tls_api(
                "a",
                "https://127.0.0.1:0",
                &origin.url(),
                &a.certificate_paths(),
            ),
            &configuration("timeouts", "timeouts:\n  tlsHandshakeSeconds: 1\n"),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let addr = gw.addr("a");

        // Handshaken at once, then idle past the timeout: the timeout is the handshake's only.
        let mut prompt = TlsClient::new(&pki, "a.test").client(addr);
        let started = Instant::now();
        let silent = Client::connect(addr);
        let mut half = Client::connect(addr);
        let hello = client_hello("a.test");
        half.send(&hello[..hello.len() / 2]);
        let limit = Duration::from_secs(5);
        for (what, client) in [("silent", &silent), ("half a ClientHello", &half)] {
            let took = closed_after(client.stream(), started, limit);
            assert!(
                took >= Duration::from_millis(900),
                "{what}: closed after {took:?}, before the 1 s timeout"
            );
        }
        assert_eq!(client_failures(&gw, "timeout", 2.0), 2.0);
        assert!(started.elapsed() > Duration::from_secs(1));
        assert_eq!(prompt.get_from("a.test", "/prompt").text(), "/prompt");
    })
}

/// `curl ARGS`, its stdout on success.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_is_served_over_tls() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin = Origin::start(|req| {
            Reply::ok(format!("{} {} {}", req.method, req.path, req.body.len()))
        });
        let config = tls_api(
            "a",
            "https://127.0.0.1:0",
            &origin.url(),
            &a.certificate_paths(),
        );
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let port = gw.addr("a").port();
        let ca = pki.ca_path().display().to_string();
        let resolve = format!("a.test:{port}:127.0.0.1");
        let url = format!("https://a.test:{port}/hello?x=1");
        let base = ["--cacert", ca.as_str(), "--resolve", resolve.as_str()];
        let report = "\n%{http_code} %{http_version}";

        // curl offers h2 and http/1.1 by ALPN and must settle on HTTP/1.1.
        let out = curl(&[&base[..], &["-w", report, &url]].concat());
        assert_eq!(out, "GET /hello?x=1 0\n200 1.1");
        let out = curl(&[&base[..], &["--http1.1", "-w", report, &url]].concat());
        assert_eq!(out, "GET /hello?x=1 0\n200 1.1");
        let out = curl(
            &[
                &base[..],
                &["--tlsv1.2", "--tls-max", "1.2", "-d", "twelve bytes", &url],
            ]
            .concat(),
        );
        assert_eq!(out, "POST /hello?x=1 12");
    })
}

#[test]
fn big_and_pipelined_bodies_cross_tls_on_both_legs_intact() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let a = pki.leaf("a", &["a.test"], false);
        let origin_cert = pki.leaf("origin", &["localhost"], false);
        let mut rng = Rng::new(42);
        let download = rng.bytes(1 << 20);
        let sizes = rng.chunk_sizes(40);
        let served = download.clone();
        let origin = TlsOrigin::start(&origin_cert, None, move |req| match req.method.as_str() {
            "POST" => Reply::ok(req.body.clone()),
            _ if req.path == "/big" => Reply::new(200).chunked(served.clone(), sizes.clone()),
            _ => Reply::ok(req.path.clone()),
        });
        let config = documents(&[
            &api_instance("a", "https://127.0.0.1:0", &[]),
            &policy_binding("a-tls", "a", "tls", None, &a.certificate_paths(), &[]),
            &service("svc", &origin.https("localhost")),
            &route_binding("a-route", "a", "svc", None, &[]),
            &outbound_binding("svc-tls", "svc", &trusted(&pki)),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let mut client = TlsClient::new(&pki, "a.test").client(gw.addr("a"));

        let upload = rng.bytes(1 << 20);
        let mut raw = format!(
            "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        )
        .into_bytes();
        raw.extend_from_slice(&upload);
        let echoed = client.request(&raw);
        assert_eq!(echoed.status, 200);
        assert_eq!(fnv1a(&echoed.body), fnv1a(&upload), "1 MiB up and back");
        let down = client.get_from("a.test", "/big");
        assert_eq!(down.status, 200);
        assert_eq!(fnv1a(&down.body), fnv1a(&download), "1 MiB chunked down");

        // Three requests in one write; the answers come back in order.
        let pipelined: String = (1..=3)
            .map(|i| get_host(&format!("/p{i}"), "a.test"))
            .collect();
        client.send(pipelined.as_bytes());
        for i in 1..=3 {
            assert_eq!(client.read_response("GET").text(), format!("/p{i}"));
        }
    })
}

// === load errors ===

#[test]
fn https_listeners_need_a_tls_policy_and_one_tls_context_per_port() {
    within(TEST_LIMIT, || {
        let pki = Pki::new("test CA");
        let (a, b) = (
            pki.leaf("a", &["a.test"], false),
            pki.leaf("b", &["b.test"], false),
        );
        let validate = |files: &[(&str, &str)]| {
            let dir = config_dir(files);
            let out = run_cli(
                &["validate", dir.path().to_str().expect("utf-8")],
                CLI_LIMIT,
            );
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.code(), stderr)
        };
        let upstream = "http://127.0.0.1:9";

        // Valid, with the certificate named relative to the YAML file.
        let ok = tls_api(
            "a",
            "https://127.0.0.1:0",
            upstream,
            "certificate:\n  key: a.key\n  crt: a.crt\n",
        );
        let files = [
            ("api.yaml", ok.as_str()),
            ("a.key", &a.key_pem),
            ("a.crt", &a.crt_pem),
        ];
        let (code, stderr) = validate(&files);
        assert_eq!(code, Some(0), "{stderr}");

        let bare = api_instance(
            "a",
            "https://127.0.0.1:0",
            &[InlineService::new("up", upstream, vec![Route::all()])],
        );
        let (code, stderr) = validate(&[("api.yaml", &bare)]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("api.yaml:6: ApiInstance/a: spec.address: "),
            "{stderr}"
        );

        // Two APIs on one port that disagree on the minimum version.
        let port = free_port().port();
        let clash = documents(&[
            &tls_api(
                "a",
                &format!("https://127.0.0.1:{port}/a"),
                upstream,
                &a.certificate_paths(),
            ),
            &tls_api(
                "b",
                &format!("https://127.0.0.1:{port}/b"),
                upstream,
                &(b.certificate_paths() + "minversion: \"1.3\"\n"),
            ),
        ]);
        let (code, stderr) = validate(&[("api.yaml", &clash)]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.lines().any(|l| l.contains("api.yaml:")),
            "the error names the file: {stderr}"
        );

        // Two certificates on one port claiming the same name: SNI could not choose.
        let twin = pki.leaf("twin", &["a.test"], false);
        let same_name = documents(&[
            &tls_api(
                "a",
                &format!("https://127.0.0.1:{port}/a"),
                upstream,
                &a.certificate_paths(),
            ),
            &tls_api(
                "twin",
                &format!("https://127.0.0.1:{port}/twin"),
                upstream,
                &twin.certificate_paths(),
            ),
        ]);
        let (code, stderr) = validate(&[("api.yaml", &same_name)]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("a.test"),
            "the error names the name: {stderr}"
        );
    })
}

#[test]
fn health_checks_of_an_https_service_probe_over_tls() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    within(TEST_LIMIT, || {
        let pki = Pki::new("origin CA");
        let cert = pki.leaf("origin", &["localhost"], false);
        let sick = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&sick);
        let a = TlsOrigin::start(&cert, None, move |req| match req.path.as_str() {
            "/healthz" if flag.load(Ordering::SeqCst) => Reply::new(503).body("sick"),
            _ => Reply::ok("a"),
        });
        let b = TlsOrigin::start(&cert, None, |_| Reply::ok("b"));
        let svc = format!(
            "{}  addresses:\n    - {}\n    - {}\n  healthCheck:\n    path: /healthz\n    \
             intervalSeconds: 0.05\n    timeoutSeconds: 5\n    unhealthyThreshold: 1\n    \
             healthyThreshold: 1\n",
            service("svc", "x").replace("  address: x\n", ""),
            a.https("localhost"),
            b.https("localhost"),
        );
        let config = documents(&[
            &api_instance("api", ANY_PORT, &[]),
            &svc,
            &route_binding("api-route", "api", "svc", None, &[]),
            &outbound_binding("svc-tls", "svc", &trusted(&pki)),
        ]);
        let gw = Gateway::start(&[("api.yaml", &config)], &[]);
        let endpoint = format!("127.0.0.1:{}", a.addr().port());
        let labels = [("service", "svc"), ("endpoint", endpoint.as_str())];
        let out = gw.metric_until("ringwall_upstream_endpoint_healthy", &labels, |v| v == 0.0);
        assert_eq!(out, 0.0, "the sick TLS endpoint was not taken out");
        // With every endpoint down the gateway would use them all: `b` must be up too. (A
        // probe over TLS slower than the default second, on a loaded test machine, took
        // it out with a threshold of one.)
        let b_endpoint = format!("127.0.0.1:{}", b.addr().port());
        let b_labels = [("service", "svc"), ("endpoint", b_endpoint.as_str())];
        let up = gw.metric_until("ringwall_upstream_endpoint_healthy", &b_labels, |v| {
            v == 1.0
        });
        assert_eq!(up, 1.0, "the healthy TLS endpoint was taken out");
        assert!(a
            .negotiated()
            .iter()
            .all(|n| n.sni.as_deref() == Some("localhost")));
        for i in 0..6 {
            assert_eq!(plain_get(gw.addr("api"), &format!("/{i}")).text(), "b");
        }
        sick.store(false, Ordering::SeqCst);
        let back = gw.metric_until("ringwall_upstream_endpoint_healthy", &labels, |v| v == 1.0);
        assert_eq!(back, 1.0, "the TLS endpoint did not come back");
    })
}
