//! Ringwall's configuration: Flex Gateway Local Mode resources, parsed and validated.
//!
//! A load is a pipeline: each file's text is parsed into documents with a line on every node
//! (`yaml`), each document is read into a resource with unknown fields rejected (`resources`),
//! and the resources are linked into an immutable [`Snapshot`] (`snapshot`).
//! Every stage keeps going after an error, so one load reports every problem with its
//! `file:line`, resource and field; the snapshot is returned only when there are none.

mod address;
mod connection;
mod env;
mod error;
mod logging;
mod model;
mod node;
mod policy;
mod resources;
mod rules;
mod settings;
mod snapshot;
mod storage;
mod view;
mod yaml;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::Path;

pub use connection::{
    ip_entry, peer_expression_is_remote_address, ConnectionRate, ConnectionRules, RateKey,
};
pub use error::{child, did_you_mean, item, ConfigError, Diagnostics, LoadErrors, Scope};
/// Re-exported so users of [`ConnectionRules`] need no dependency of their own.
pub use ipnet::IpNet;
pub use logging::{AccessLogs, LogLevel, LogOutput, LogOutputKind, Logging, RuntimeLogs};
pub use model::{
    upstream_path, ApiInstance, Balancing, HashOn, HealthCheck, Policy, Route, Upstream,
};
pub use node::{Fields, Node, Value};
pub use policy::{is_known_policy, POLICIES};
pub use rules::Rule;
pub use settings::{Limits, Settings, Timeouts, MAX_REQUEST_HEADERS};
pub use snapshot::{Snapshot, Summary};
pub use storage::{Cluster, Redis, RedisTls, Secret, Sentinel, SharedStorage};
pub use view::{is_secret_key, is_secret_pair, REDACTED};
pub use yaml::parse_documents;

use address::system_resolve;
use resources::{Environment, Resources};

/// Loads every `*.yaml` / `*.yml` file of `dir` (not its subdirectories, nor hidden files such
/// as editor backups), in file-name order. Other files are ignored; no resources at all is an
/// error.
pub fn load_dir(dir: &Path) -> Result<Snapshot, LoadErrors> {
    let origin = dir.display().to_string();
    let fail = |message: String| {
        LoadErrors(vec![ConfigError {
            file: origin.clone(),
            line: 0,
            resource: None,
            field: None,
            message,
        }])
    };
    let entries = fs::read_dir(dir).map_err(|e| fail(format!("cannot read directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("cannot read directory: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_yaml = Path::new(name.as_ref())
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"));
        // `metadata` follows symlinks, so a link to a file counts and a `x.yaml/` directory not.
        if is_yaml
            && !name.starts_with('.')
            && fs::metadata(entry.path()).is_ok_and(|m| m.is_file())
        {
            paths.push(entry.path());
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));

    let mut diag = Diagnostics::default();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let display = path.display().to_string();
        match fs::read(&path).map(String::from_utf8) {
            Ok(Ok(text)) => files.push((display, text)),
            Ok(Err(_)) => Scope::new(&mut diag, &display).error(0, "", "not valid UTF-8"),
            Err(e) => Scope::new(&mut diag, &display).error(0, "", format!("cannot read: {e}")),
        }
    }
    let env = Environment {
        var: &|name| std::env::var(name).ok(),
        resolve: &system_resolve,
    };
    load(&files, &env, &origin, diag)
}

/// Loads resources from `(display name, text)` pairs, in the order given.
pub fn load_files(files: &[(String, String)]) -> Result<Snapshot, LoadErrors> {
    load_files_with_env(files, |name| std::env::var(name).ok())
}

/// [`load_files`] with environment variables looked up by `var` instead of the process
/// environment.
pub fn load_files_with_env(
    files: &[(String, String)],
    var: impl Fn(&str) -> Option<String>,
) -> Result<Snapshot, LoadErrors> {
    let env = Environment {
        var: &var,
        resolve: &system_resolve,
    };
    load(files, &env, "", Diagnostics::default())
}

/// [`load_files`] with environment variables from `var` and upstream host names resolved by
/// `resolve` (a host and port to addresses), so that tests and fuzzing neither read the
/// environment nor send a DNS query.
pub fn load_with(
    files: &[(String, String)],
    var: &dyn Fn(&str) -> Option<String>,
    resolve: &dyn Fn(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>>,
) -> Result<Snapshot, LoadErrors> {
    let env = Environment { var, resolve };
    load(files, &env, "", Diagnostics::default())
}

/// `origin` names the whole load in the "no resources" error.
fn load(
    files: &[(String, String)],
    env: &Environment<'_>,
    origin: &str,
    mut diag: Diagnostics,
) -> Result<Snapshot, LoadErrors> {
    let mut resources = Resources::default();
    let mut documents = 0;
    for (name, text) in files {
        let mut scope = Scope::new(&mut diag, name);
        let docs = yaml::parse_documents(text, &mut scope);
        documents += docs.len();
        for doc in &docs {
            scope.resource = None;
            resources.add(doc, env, &mut scope);
        }
    }
    if documents == 0 && diag.errors.is_empty() {
        let message = if files.is_empty() {
            "no resources: no *.yaml or *.yml files"
        } else {
            "no resources: the files hold no YAML documents"
        };
        Scope::new(&mut diag, origin).error(0, "", message);
    }

    let mut snapshot = snapshot::link(resources, files.len(), &mut diag);
    if !diag.errors.is_empty() {
        return Err(LoadErrors(diag.errors));
    }
    snapshot.warnings = diag.warnings;
    Ok(snapshot)
}
