//! wrk's side of the bench: the Lua script it runs (the request of a workload, and a `done()`
//! that prints the latency at every percentile of [`PERCENTILES`], since `--latency` stops at
//! 99%), and reading its report. Pure, so that it is tested on captured output.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

use crate::peers::Request;

/// The percentiles wrk reports, for the tables (50, 99, 99.9) and the plot's points, on a
/// grid that is about even in log(1/(1-p)); 100 is the maximum.
pub const PERCENTILES: [f64; 15] = [
    10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.8, 99.9, 99.95, 99.98, 99.99, 100.0,
];

/// The start of each line `done()` prints: `latency-percentile P MICROSECONDS`.
const PERCENTILE_LINE: &str = "latency-percentile";

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// (percentile, microseconds) at each of [`PERCENTILES`].
    pub percentiles: Vec<(f64, f64)>,
    /// connect + read + write + timeout.
    pub socket_errors: u64,
    /// wrk's "Non-2xx or 3xx responses".
    pub non_2xx: u64,
}

impl WrkReport {
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx
    }
}

/// The script for one workload: its method, body and headers (set once: wrk then sends the
/// same bytes every time, with no Lua per request) and the `done()` that prints the
/// percentiles.
pub fn script(request: &Request, headers: &[(&str, &str)]) -> String {
    let mut lua = String::from("-- Written by `cargo xtask bench`.\n");
    let _ = writeln!(lua, "wrk.method = \"{}\"", request.method);
    if request.body_bytes > 0 {
        let _ = writeln!(lua, "wrk.body = string.rep(\"x\", {})", request.body_bytes);
    }
    for (name, value) in headers {
        let _ = writeln!(lua, "wrk.headers[\"{name}\"] = \"{value}\"");
    }
    let list: Vec<String> = PERCENTILES.iter().map(|p| p.to_string()).collect();
    let _ = write!(
        lua,
        "local percentiles = {{ {} }}
function done(summary, latency, requests)
  for _, p in ipairs(percentiles) do
    -- wrk's percentile(100) is 0 (its rank is one past the last request): the max instead.
    local us = p < 100 and latency:percentile(p) or latency.max
    io.write(string.format(\"{PERCENTILE_LINE} %g %d\\n\", p, us))
  end
end
",
        list.join(", ")
    );
    lua
}

pub fn parse(output: &str) -> Result<WrkReport> {
    let mut requests_per_sec = None;
    let mut percentiles = Vec::new();
    let mut requests = 0;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => requests_per_sec = Some(number(value)?),
            [PERCENTILE_LINE, pct, us] => percentiles.push((number(pct)?, number(us)?)),
            [count, "requests", "in", ..] => requests = count.parse().context("request count")?,
            ["Socket", "errors:", ..] => {
                // "Socket errors: connect 0, read 12, write 0, timeout 3"
                socket_errors = words[2..]
                    .iter()
                    .filter_map(|word| word.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                non_2xx = count.parse().context("non-2xx count")?;
            }
            _ => {}
        }
    }
    let Some(requests_per_sec) = requests_per_sec else {
        bail!("no Requests/sec line in wrk's output");
    };
    let at = |wanted: f64| {
        percentiles
            .iter()
            .find(|(pct, _)| *pct == wanted)
            .map(|&(_, us)| us)
            .with_context(|| {
                format!("no {wanted}th percentile in wrk's output (was the bench's script given?)")
            })
    };
    Ok(WrkReport {
        requests,
        requests_per_sec,
        p50_us: at(50.0)?,
        p99_us: at(99.0)?,
        p999_us: at(99.9)?,
        percentiles,
        socket_errors,
        non_2xx,
    })
}

fn number(text: &str) -> Result<f64> {
    text.parse()
        .with_context(|| format!("`{text}` is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The testdata files were captured with wrk 4.1 running `testdata/wrk-small.lua` against
    /// nginx: `return 200`, `return 404` and `return 444` (closes without answering).
    #[test]
    fn the_script_of_a_small_get_is_the_one_the_captures_ran() {
        let small = Request {
            method: "GET",
            path: "/",
            body_bytes: 0,
            answer_bytes: 5,
        };
        assert_eq!(script(&small, &[]), include_str!("testdata/wrk-small.lua"));
    }

    #[test]
    fn a_post_sets_its_body_and_headers_once() {
        let upload = Request {
            method: "POST",
            path: "/upload",
            body_bytes: 1024,
            answer_bytes: 8,
        };
        let lua = script(&upload, &[("Authorization", "Bearer a.b.c")]);
        assert!(lua.contains("wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", 1024)\n"));
        assert!(lua.contains("wrk.headers[\"Authorization\"] = \"Bearer a.b.c\"\n"));
        // No request() or response(): wrk then builds the request once and runs no Lua per
        // request.
        assert!(!lua.contains("function request") && !lua.contains("function response"));
    }

    #[test]
    fn parses_every_percentile_of_a_run() {
        let report = parse(include_str!("testdata/wrk-small.txt")).unwrap();
        assert_eq!(report.requests, 170746);
        assert_eq!(report.requests_per_sec, 170672.95);
        assert_eq!(
            (report.p50_us, report.p99_us, report.p999_us),
            (66.0, 1320.0, 3745.0)
        );
        assert_eq!(report.percentiles.len(), PERCENTILES.len());
        let points: Vec<f64> = report.percentiles.iter().map(|&(p, _)| p).collect();
        assert_eq!(points, PERCENTILES);
        assert_eq!(report.percentiles[0], (10.0, 43.0));
        assert_eq!(report.percentiles[14], (100.0, 4220.0), "the max");
        assert_eq!(report.errors(), 0);
    }

    #[test]
    fn parses_a_run_with_non_2xx_responses() {
        let report = parse(include_str!("testdata/wrk-non-2xx.txt")).unwrap();
        assert_eq!(report.requests_per_sec, 167072.35);
        assert_eq!(report.non_2xx, 183743);
        assert_eq!(report.socket_errors, 0);
        assert_eq!(report.errors(), 183743);
        assert_eq!((report.p99_us, report.p999_us), (2999.0, 4112.0));
    }

    #[test]
    fn parses_a_run_with_socket_errors() {
        let report = parse(include_str!("testdata/wrk-socket-errors.txt")).unwrap();
        assert_eq!((report.requests, report.requests_per_sec), (0, 0.0));
        assert_eq!(report.socket_errors, 47116);
        assert_eq!(report.non_2xx, 0);
        assert_eq!(report.p999_us, 0.0);
    }

    #[test]
    fn refuses_output_without_results() {
        let failed = "unable to connect to 127.0.0.1:9001 Connection refused\n";
        assert!(parse(failed).is_err());
        let no_percentiles = "Requests/sec: 100.0\nlatency-percentile 50 10\n";
        let err = parse(no_percentiles).unwrap_err().to_string();
        assert!(err.contains("no 99th percentile"), "{err}");
        let garbled = "Requests/sec: 100.0\nlatency-percentile 50 ten\n";
        assert!(parse(garbled).is_err());
    }
}
