//! Connection rules from the policy files, enforced in XDP and at accept: each case runs
//! through both planes and must come out the same, apart from the unit of the counters
//! (packets in the kernel, connections at accept). Every case builds its own network lab
//! (two namespaces and a veth pair) and needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use ringwall_tests::netns::{connect_from, NetLab, CLIENT_IPS};
use ringwall_tests::*;

const HEADER: &str = "apiVersion: gateway.mulesoft.com/v1alpha1\n";

/// An ApiInstance on the lab's gateway address whose upstream is down: any source that
/// gets in receives a 502, which is all these tests need to see.
fn edge(policies: &[&str]) -> String {
    let mut out = format!(
        "{HEADER}kind: ApiInstance\nmetadata:\n  name: edge\nspec:\n  address: http://198.18.0.1:0\n  \
         services:\n    down:\n      address: http://127.0.0.1:9\n"
    );
    for (i, p) in policies.iter().enumerate() {
        out.push_str(&format!(
            "---\n{HEADER}kind: PolicyBinding\nmetadata:\n  name: rule-{i}\nspec:\n  targetRef:\n    \
             name: edge\n{p}"
        ));
    }
    out
}

fn start(lab: &NetLab, config: &str, plane: &str) -> Gateway {
    let gw = Gateway::start_in(
        Some(&lab.gateway_ns),
        &[("edge.yaml", config)],
        &[
            "--xdp",
            plane,
            "--xdp-iface",
            &lab.gateway_if,
            "--admin",
            "127.0.0.1:0",
            // Reloads here come from SIGHUP alone.
            "--no-watch",
        ],
    );
    let want = if plane == "off" { "accept" } else { "xdp" };
    assert!(
        gw.connection_rules().starts_with(want),
        "connection rules enforced in {:?}, want {want}",
        gw.connection_rules()
    );
    gw
}

/// The status of `GET /` sent from `from`, or why there was none.
fn request_from(from: Ipv4Addr, to: SocketAddr) -> Result<u16, String> {
    let mut s =
        connect_from(from, to, Duration::from_millis(700)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no response (read {n} bytes: {head:?})"))
}

/// `GET /connection-rules` from the admin listener, inside the gateway's namespace.
fn stats(lab: &NetLab, gw: &Gateway) -> String {
    let admin = gw.admin_addr();
    lab.on_gateway(move || Client::connect(admin).get("/connection-rules").text())
}

fn stat(json: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    json.split(&key)
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

fn deny_list_refuses_only_its_sources(plane: &str) {
    let lab = NetLab::new();
    let config = edge(&[
        "  policyRef:\n    name: ip-blocklist-flex\n  config:\n    ips:\n      - 198.18.0.3\n",
    ]);
    let gw = start(&lab, &config, plane);
    let addr = gw.addr("edge");
    let (open, denied) = lab.on_client(move || {
        (
            request_from(CLIENT_IPS[0], addr),
            request_from(CLIENT_IPS[1], addr),
        )
    });
    assert_eq!(open, Ok(502), "an unlisted source gets through");
    assert!(
        denied.is_err(),
        "a denied source got a response: {denied:?}"
    );
    let json = stats(&lab, &gw);
    assert!(stat(&json, "dropped_deny") >= 1, "{json}");
    assert_eq!(stat(&json, "dropped_allow"), 0, "{json}");
    assert!(stat(&json, "passed") >= 1, "{json}");
}

fn allow_list_admits_only_its_sources(plane: &str) {
    let lab = NetLab::new();
    let config = edge(&[
        "  policyRef:\n    name: ip-allowlist-flex\n  config:\n    ips:\n      - 198.18.0.0/24\n",
    ]);
    let gw = start(&lab, &config, plane);
    let addr = gw.addr("edge");
    let results = lab.on_client(move || CLIENT_IPS.map(|ip| request_from(ip, addr)));
    assert_eq!(results[0], Ok(502));
    assert_eq!(results[1], Ok(502));
    assert!(
        results[2].is_err(),
        "198.18.1.4 is outside the allow list: {:?}",
        results[2]
    );
    let json = stats(&lab, &gw);
    assert!(stat(&json, "dropped_allow") >= 1, "{json}");
    assert_eq!(stat(&json, "dropped_deny"), 0, "{json}");
}

fn rate_limit_caps_one_source_and_spares_another(plane: &str) {
    let lab = NetLab::new();
    let config = edge(&[
        "  policyRef:\n    name: connection-rate-limit\n  config:\n    connectionsPerSecond: 5\n    burst: 5\n",
    ]);
    let gw = start(&lab, &config, plane);
    let addr = gw.addr("edge");
    let burst_from = move |ip: Ipv4Addr| {
        let attempts: Vec<_> = (0..20)
            .map(|_| thread::spawn(move || request_from(ip, addr)))
            .collect();
        attempts
            .into_iter()
            .map(|t| t.join().expect("attempt"))
            .filter(|r| *r == Ok(502))
            .count()
    };
    let (first, second) =
        lab.on_client(move || (burst_from(CLIENT_IPS[0]), burst_from(CLIENT_IPS[1])));
    // The burst of 5, plus what 5/s refills while 20 attempts start (well under a second).
    assert!(
        (5..=8).contains(&first),
        "{first} of 20 got through, want about 5"
    );
    assert!(
        (5..=8).contains(&second),
        "another source has its own bucket: {second} of 20"
    );
    let json = stats(&lab, &gw);
    assert!(stat(&json, "dropped_rate") >= 24, "{json}");
}

/// The id of the XDP program attached to the lab's gateway interface, if any.
fn xdp_prog_id(lab: &NetLab) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.gateway_ns,
            "-d",
            "link",
            "show",
            "dev",
            &lab.gateway_if,
        ])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

fn a_reload_swaps_the_lists_in_place(plane: &str) {
    let lab = NetLab::new();
    let deny = |ip: &str| {
        edge(&[&format!(
            "  policyRef:\n    name: ip-blocklist-flex\n  config:\n    ips:\n      - {ip}\n"
        )])
    };
    let mut gw = start(&lab, &deny("198.18.0.3"), plane);
    let addr = gw.addr("edge");
    let attached = xdp_prog_id(&lab);
    assert_eq!(
        attached.is_some(),
        plane == "required",
        "{:?}",
        gw.connection_rules()
    );
    let before = lab.on_client(move || {
        (
            request_from(CLIENT_IPS[0], addr),
            request_from(CLIENT_IPS[1], addr),
        )
    });
    assert_eq!(before.0, Ok(502));
    assert!(before.1.is_err(), "{before:?}");

    assert_eq!(
        gw.reload_with("edge.yaml", Some(&deny("198.18.0.2"))),
        "reloaded generation=2"
    );

    let after = lab.on_client(move || {
        (
            request_from(CLIENT_IPS[0], addr),
            request_from(CLIENT_IPS[1], addr),
        )
    });
    assert!(after.0.is_err(), "198.18.0.2 is denied now: {after:?}");
    assert_eq!(after.1, Ok(502), "198.18.0.3 is admitted now");
    // The maps changed under the program that was attached at start.
    assert_eq!(xdp_prog_id(&lab), attached);

    // And the program leaves with the gateway.
    gw.terminate();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(xdp_prog_id(&lab), None, "XDP still attached after exit");
}

#[test]
fn reload_in_xdp() {
    within(TEST_LIMIT, || a_reload_swaps_the_lists_in_place("required"));
}

#[test]
fn reload_at_accept() {
    within(TEST_LIMIT, || a_reload_swaps_the_lists_in_place("off"));
}

#[test]
fn deny_list_in_xdp() {
    within(TEST_LIMIT, || {
        deny_list_refuses_only_its_sources("required")
    });
}

#[test]
fn deny_list_at_accept() {
    within(TEST_LIMIT, || deny_list_refuses_only_its_sources("off"));
}

#[test]
fn allow_list_in_xdp() {
    within(TEST_LIMIT, || {
        allow_list_admits_only_its_sources("required")
    });
}

#[test]
fn allow_list_at_accept() {
    within(TEST_LIMIT, || allow_list_admits_only_its_sources("off"));
}

#[test]
fn rate_limit_in_xdp() {
    within(TEST_LIMIT, || {
        rate_limit_caps_one_source_and_spares_another("required")
    });
}

#[test]
fn rate_limit_at_accept() {
    within(TEST_LIMIT, || {
        rate_limit_caps_one_source_and_spares_another("off")
    });
}

#[test]
fn auto_falls_back_to_accept_with_one_warning_naming_the_cause() {
    within(TEST_LIMIT, || {
        // Loopback only: the block list names 127.0.0.1 itself, the interface does not exist.
        let config = format!(
            "{HEADER}kind: ApiInstance\nmetadata:\n  name: edge\nspec:\n  address: http://127.0.0.1:0\n  \
             services:\n    down:\n      address: http://127.0.0.1:9\n---\n{HEADER}kind: PolicyBinding\n\
             metadata:\n  name: block-self\nspec:\n  targetRef:\n    name: edge\n  policyRef:\n    \
             name: ip-blocklist-flex\n  config:\n    ips: [127.0.0.1]\n"
        );
        let gw = Gateway::start(
            &[("edge.yaml", &config)],
            &["--xdp", "auto", "--xdp-iface", "rw-no-such-if"],
        );
        assert_eq!(gw.connection_rules(), "accept");
        let stderr = gw.wait_stderr("XDP unavailable", Duration::from_secs(5));
        assert!(
            stderr.contains("rw-no-such-if"),
            "the warning names the cause:\n{stderr}"
        );
        assert_eq!(stderr.matches("XDP unavailable").count(), 1, "{stderr}");
        // The rule still holds, at accept.
        let refused = request_from(Ipv4Addr::LOCALHOST, gw.addr("edge"));
        assert!(refused.is_err(), "{refused:?}");
    })
}

#[test]
fn required_exits_with_the_cause() {
    let config = edge(&[]).replace("198.18.0.1", "127.0.0.1");
    let dir = config_dir(&[("edge.yaml", &config)]);
    let out = run_cli(
        &[
            "run",
            "--config",
            dir.path().to_str().expect("utf-8"),
            "--xdp",
            "required",
            "--xdp-iface",
            "rw-no-such-if",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("XDP is required") && stderr.contains("rw-no-such-if"),
        "{stderr}"
    );
}
