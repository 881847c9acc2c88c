//! Reading the report of `wrk --latency`. Pure, so that it is tested on captured output.

use anyhow::{bail, Context, Result};

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
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

pub fn parse(output: &str) -> Result<WrkReport> {
    let mut requests_per_sec = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut requests = 0;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => requests_per_sec = Some(number(value)?),
            ["50%", value] => p50_us = Some(micros(value)?),
            ["99%", value] => p99_us = Some(micros(value)?),
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
    let (Some(p50_us), Some(p99_us)) = (p50_us, p99_us) else {
        bail!("no latency distribution in wrk's output (is --latency given?)");
    };
    Ok(WrkReport {
        requests,
        requests_per_sec,
        p50_us,
        p99_us,
        socket_errors,
        non_2xx,
    })
}

fn number(text: &str) -> Result<f64> {
    text.parse()
        .with_context(|| format!("`{text}` is not a number"))
}

/// wrk's durations (`57.00us`, `1.07ms`, `2.00s`, `1.50m`) in microseconds.
fn micros(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("`{text}` has no unit"))?;
    let (value, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("`{text}` has an unknown unit"),
    };
    Ok(number(value)? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_run_with_socket_errors() {
        let report = parse(include_str!("testdata/wrk-socket-errors.txt")).unwrap();
        assert_eq!(
            report,
            WrkReport {
                requests: 21141,
                requests_per_sec: 19219.14,
                p50_us: 42.0,
                p99_us: 192.0,
                socket_errors: 21142,
                non_2xx: 0,
            }
        );
    }

    #[test]
    fn parses_a_run_with_non_2xx_responses() {
        let report = parse(include_str!("testdata/wrk-non-2xx.txt")).unwrap();
        assert_eq!(report.requests_per_sec, 206461.52);
        assert_eq!(report.non_2xx, 227048);
        assert_eq!(report.socket_errors, 0);
        assert_eq!(report.errors(), 227048);
        assert_eq!(report.p99_us, 131.0);
    }

    #[test]
    fn converts_every_unit_to_microseconds() {
        assert_eq!(micros("57.00us").unwrap(), 57.0);
        assert_eq!(micros("1.07ms").unwrap(), 1070.0);
        assert_eq!(micros("2.00s").unwrap(), 2_000_000.0);
        assert_eq!(micros("1.50m").unwrap(), 90_000_000.0);
        assert!(micros("12").is_err());
        assert!(micros("3.0xs").is_err());
    }

    #[test]
    fn refuses_output_without_results() {
        let failed = "unable to connect to 127.0.0.1:9001 Connection refused\n";
        assert!(parse(failed).is_err());
        let no_latency = "Requests/sec: 100.0\n";
        assert!(parse(no_latency)
            .unwrap_err()
            .to_string()
            .contains("--latency"));
    }
}
