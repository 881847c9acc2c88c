//! `ringwall validate DIR`, and `ringwall run` refusing an invalid directory: every error is
//! reported, one per line, as `FILE:LINE: Kind/name: field.path: message`.

use std::time::Duration;

use ringwall_tests::yaml::*;
use ringwall_tests::*;

const CLI_LIMIT: Duration = Duration::from_secs(10);

/// Two files, four errors, the second of each in a later document of its file so line numbers
/// must count across `---`. References point at valid resources (in ok.yaml), so no error
/// follows from another.
const BAD_A: &str = "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: ApiInstance
metadata:
  name: orders
spec:
  address: http://127.0.0.1:0/orders
  colour: blue
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: Service
metadata:
  name: backend
spec:
  address: htp//nowhere
";

const BAD_B: &str = "\
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: dangling
spec:
  targetRef: {kind: ApiInstance, name: no-such-api}
  policyRef: {name: route}
  config: {destinationRef: {kind: Service, name: good}}
---
apiVersion: gateway.mulesoft.com/v1alpha1
kind: PolicyBinding
metadata:
  name: mystery
spec:
  targetRef: {kind: ApiInstance, name: valid}
  policyRef: {name: no-such-policy}
";

/// (file, line, `Kind/name`, field path) of every error in BAD_A and BAD_B.
const EXPECTED: [(&str, usize, &str, &str); 4] = [
    ("a.yaml", 7, "ApiInstance/orders", "spec.colour"),
    ("a.yaml", 14, "Service/backend", "spec.address"),
    ("b.yaml", 6, "PolicyBinding/dangling", "spec.targetRef"),
    ("b.yaml", 16, "PolicyBinding/mystery", "spec.policyRef"),
];

fn valid_files() -> (String, String) {
    let api = api_instance("valid", ANY_PORT, &[]);
    let backend = documents(&[
        &service("good", "http://127.0.0.1:9/"),
        &route_binding("valid-route", "valid", "good", None, &[]),
    ]);
    (api, backend)
}

/// One error line, split: file name (without directories), line, and the rest.
fn parse_error_line(line: &str) -> Option<(String, usize, String)> {
    let at = line.find(".yaml:")? + ".yaml".len();
    let file = line[..at].rsplit('/').next()?.to_string();
    let rest = &line[at + 1..];
    let colon = rest.find(':')?;
    let number = rest[..colon].parse().ok()?;
    Some((file, number, rest[colon + 1..].trim_start().to_string()))
}

/// Asserts `stderr` reports exactly the EXPECTED errors, in the contract's format.
#[track_caller]
fn assert_reports_expected_errors(stderr: &str) {
    let errors: Vec<_> = stderr.lines().filter_map(parse_error_line).collect();
    for (file, line, object, field) in EXPECTED {
        let found = errors.iter().filter(|(f, l, rest)| {
            f == file && *l == line && rest.starts_with(&format!("{object}: {field}"))
        });
        let found: Vec<_> = found.collect();
        assert_eq!(
            found.len(),
            1,
            "want one `{file}:{line}: {object}: {field}...: message` line; stderr:\n{stderr}"
        );
        let (_, _, rest) = found[0];
        // What follows the field path (which may go deeper, e.g. `spec.targetRef.name`).
        let after_field = &rest[object.len() + 2 + field.len()..];
        let message = after_field.split_once(": ").map_or("", |(_, m)| m);
        assert!(
            !message.trim().is_empty(),
            "error without a message: {rest:?}"
        );
        assert!(
            !message.contains("ringwall:"),
            "an error line runs into the next message (missing newline): {rest:?}"
        );
    }
    assert_eq!(
        errors.len(),
        EXPECTED.len(),
        "unexpected extra errors; stderr:\n{stderr}"
    );
}

#[test]
fn valid_directory_is_ok_with_a_summary() {
    within(TEST_LIMIT, || {
        let (api, backend) = valid_files();
        let dir = config_dir(&[("api.yaml", &api), ("backend.yml", &backend)]);

        let out = run_cli(
            &["validate", dir.path().to_str().expect("utf-8")],
            CLI_LIMIT,
        );

        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.starts_with("ok:"), "{stdout:?}");
        assert_eq!(stdout.lines().count(), 1, "one summary line: {stdout:?}");
    })
}

#[test]
fn valid_summary_has_the_contract_format() {
    within(TEST_LIMIT, || {
        let (api, backend) = valid_files();
        let dir = config_dir(&[("api.yaml", &api), ("backend.yml", &backend)]);

        let out = run_cli(
            &["validate", dir.path().to_str().expect("utf-8")],
            CLI_LIMIT,
        );

        // Verbatim the example of docs/CONTRACTS.md, which is this directory's summary.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            "ok: 2 files: 1 ApiInstance, 1 Service, 1 PolicyBinding, 0 Configurations"
        );
    })
}

#[test]
fn invalid_directory_reports_every_error_with_its_line() {
    within(TEST_LIMIT, || {
        let (api, backend) = valid_files();
        let dir = config_dir(&[
            ("a.yaml", BAD_A),
            ("b.yaml", BAD_B),
            ("ok.yaml", &documents(&[&api, &backend])),
        ]);

        let out = run_cli(
            &["validate", dir.path().to_str().expect("utf-8")],
            CLI_LIMIT,
        );

        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).starts_with("ok:"),
            "an invalid directory was called ok"
        );
        assert_reports_expected_errors(&stderr);
    })
}

#[test]
fn run_refuses_an_invalid_directory_with_the_same_errors() {
    within(TEST_LIMIT, || {
        let (api, backend) = valid_files();
        let dir = config_dir(&[
            ("a.yaml", BAD_A),
            ("b.yaml", BAD_B),
            ("ok.yaml", &documents(&[&api, &backend])),
        ]);

        let out = run_cli(
            &[
                "run",
                "--config",
                dir.path().to_str().expect("utf-8"),
                "--workers",
                "1",
            ],
            CLI_LIMIT,
        );

        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
        assert!(
            !stdout.lines().any(|l| l.starts_with("ready")),
            "an invalid config got as far as ready:\n{stdout}"
        );
        assert_reports_expected_errors(&stderr);
    })
}

#[test]
fn the_example_configuration_is_valid() {
    within(TEST_LIMIT, || {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let out = run_cli(&["validate", examples.to_str().expect("utf-8")], CLI_LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(stderr, "", "warnings in the examples");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("ok: "),
            "{out:?}"
        );
    })
}
