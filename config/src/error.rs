//! What a failed load reports, and how the loader collects it.
//!
//! Loading never stops at the first problem: every stage records errors (and
//! warnings) in a [`Diagnostics`] through a [`Scope`], which knows the file and
//! the resource being read, so each message carries `file:line`, the resource's
//! `Kind/name` and the field path the user has to fix.

use std::fmt;

use serde::Serialize;

/// One problem found while loading, located as precisely as the loader can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The file as the caller named it (for [`crate::load_dir`], the directory joined with the
    /// file name).
    pub file: String,
    /// 1-based line; 0 when the problem is not tied to a line (an unreadable file, an empty
    /// directory).
    pub line: usize,
    /// `Kind/name` of the resource, `Kind` alone while the name is unknown.
    pub resource: Option<String>,
    /// Dotted path of the offending field, e.g. `spec.services.upstream.address`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `{file}:{line}: {resource}: {field}: {message}`, leaving out absent parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            f.write_str(&self.file)?;
            if self.line > 0 {
                write!(f, ":{}", self.line)?;
            }
            f.write_str(": ")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every error of one load, in the order they were found.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<ConfigError>);

impl fmt::Display for LoadErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Errors and warnings gathered over a whole load.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

/// Where the loader is reading: a file and, once known, a resource.
///
/// Public so that the proxy reads each policy's `config` with the same checked accessors and
/// the same `file:line: Kind/name: field: message` errors, see [`Scope::for_policy`].
pub struct Scope<'a> {
    pub diag: &'a mut Diagnostics,
    pub file: &'a str,
    pub resource: Option<String>,
}

impl<'a> Scope<'a> {
    pub fn new(diag: &'a mut Diagnostics, file: &'a str) -> Self {
        Scope {
            diag,
            file,
            resource: None,
        }
    }

    /// Reading the `config` of `policy`: errors carry its file and its resource.
    pub fn for_policy(diag: &'a mut Diagnostics, policy: &'a crate::Policy) -> Self {
        Scope {
            diag,
            file: &policy.file,
            resource: Some(policy.resource.clone()),
        }
    }

    fn located(&self, line: usize, field: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line,
            resource: self.resource.clone(),
            field: (!field.is_empty()).then(|| field.to_owned()),
            message,
        }
    }

    /// Records an error; an empty `field` means the problem is the resource (or file) itself.
    pub fn error(&mut self, line: usize, field: &str, message: impl Into<String>) {
        let error = self.located(line, field, message.into());
        self.diag.errors.push(error);
    }

    pub fn warn(&mut self, line: usize, field: &str, message: impl Into<String>) {
        let warning = self.located(line, field, message.into());
        self.diag.warnings.push(warning);
    }
}

/// `parent.key`, or `key` at the top of a resource.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub fn item(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// The candidate closest to `word` by edit distance, when it is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: usize, resource: Option<&str>, field: Option<&str>) -> ConfigError {
        ConfigError {
            file: "a.yaml".into(),
            line,
            resource: resource.map(Into::into),
            field: field.map(Into::into),
            message: "boom".into(),
        }
    }

    #[test]
    fn display_leaves_out_absent_parts() {
        let full = error(3, Some("ApiInstance/x"), Some("spec.address"));
        assert_eq!(
            full.to_string(),
            "a.yaml:3: ApiInstance/x: spec.address: boom"
        );
        assert_eq!(error(3, None, None).to_string(), "a.yaml:3: boom");
        assert_eq!(
            error(0, Some("Service/s"), None).to_string(),
            "a.yaml: Service/s: boom"
        );
    }

    #[test]
    fn load_errors_one_per_line() {
        let errors = LoadErrors(vec![error(1, None, None), error(2, None, None)]);
        assert_eq!(errors.to_string(), "a.yaml:1: boom\na.yaml:2: boom");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("adress", ["address", "services"]),
            Some("address")
        );
        assert_eq!(did_you_mean("rate-limiting", ["rate-limiting-flex"]), None);
        assert_eq!(
            did_you_mean("rate-limitng-flex", ["rate-limiting-flex", "route"]),
            Some("rate-limiting-flex")
        );
        assert_eq!(did_you_mean("zzz", ["address"]), None);
    }
}
