//! `spec.logging` of a Configuration: named outputs, and which of them runtime and access logs
//! go to.
//!
//! Outputs are declared once and referenced by name; a reference to an output that does not
//! exist is an error, so a typo cannot silently turn the access log off.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::{item, Scope};
use crate::node::{Fields, Node};

/// `spec.logging`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Logging {
    pub outputs: Vec<LogOutput>,
    #[serde(rename = "runtimeLogs")]
    pub runtime: RuntimeLogs,
    #[serde(rename = "accessLogs")]
    pub access: AccessLogs,
}

/// Shown as `{name, type: stdout}` or `{name, type: file, path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogOutput {
    pub name: String,
    #[serde(flatten)]
    pub kind: LogOutputKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "path", rename_all = "lowercase")]
pub enum LogOutputKind {
    Stdout,
    /// `parameters.path` (a directory) joined with `parameters.file`.
    File(PathBuf),
}

/// `runtimeLogs`: no outputs means the default sink (stderr).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeLogs {
    #[serde(rename = "logLevel")]
    pub level: LogLevel,
    pub outputs: Vec<String>,
}

/// `accessLogs`: no outputs means no access log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccessLogs {
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

const LOG_LEVELS: &[(&str, LogLevel)] = &[
    ("trace", LogLevel::Trace),
    ("debug", LogLevel::Debug),
    ("info", LogLevel::Info),
    ("warn", LogLevel::Warn),
    ("error", LogLevel::Error),
];

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        LOG_LEVELS
            .iter()
            .find(|&&(_, level)| level == self)
            .map_or("info", |&(name, _)| name)
    }
}

pub(crate) fn parse_logging(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Logging> {
    let f = scope.map(node, path, &["outputs", "runtimeLogs", "accessLogs"])?;
    let mut ok = true;
    let mut logging = Logging::default();
    if let Some(outputs) = f.get("outputs") {
        let outputs_path = f.path_of("outputs");
        let items = scope.seq(outputs, &outputs_path).unwrap_or_default();
        for (i, node) in items.iter().enumerate() {
            let output_path = item(&outputs_path, i);
            match log_output(node, &output_path, scope) {
                Some(output) if logging.outputs.iter().any(|o| o.name == output.name) => {
                    let message = format!("output `{}` is defined twice", output.name);
                    scope.error(node.line, &output_path, message);
                    ok = false;
                }
                Some(output) => logging.outputs.push(output),
                None => ok = false,
            }
        }
    }
    if let Some(runtime) = f.get("runtimeLogs") {
        let runtime_path = f.path_of("runtimeLogs");
        if let Some(r) = scope.map(runtime, &runtime_path, &["logLevel", "outputs"]) {
            if let Some(level) = r.get("logLevel") {
                match log_level(level, &r.path_of("logLevel"), scope) {
                    Some(level) => logging.runtime.level = level,
                    None => ok = false,
                }
            }
            ok &= output_refs(&r, &logging.outputs, &mut logging.runtime.outputs, scope);
        }
    }
    if let Some(access) = f.get("accessLogs") {
        let access_path = f.path_of("accessLogs");
        if let Some(a) = scope.map(access, &access_path, &["outputs"]) {
            ok &= output_refs(&a, &logging.outputs, &mut logging.access.outputs, scope);
        }
    }
    ok.then_some(logging)
}

fn log_output(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<LogOutput> {
    let f = scope.map(node, path, &["name", "type", "parameters"])?;
    let name = scope
        .require(&f, "name")
        .and_then(|n| scope.str(n, &f.path_of("name")));
    let type_node = scope.require(&f, "type")?;
    let type_path = f.path_of("type");
    let kind = match scope.str(type_node, &type_path)? {
        "stdout" => {
            if let Some(params) = f.get("parameters") {
                scope.map(params, &f.path_of("parameters"), &[]);
            }
            LogOutputKind::Stdout
        }
        "file" => {
            let params = scope.require(&f, "parameters")?;
            let p = scope.map(params, &f.path_of("parameters"), &["path", "file"])?;
            let dir = scope
                .require(&p, "path")
                .and_then(|n| scope.str(n, &p.path_of("path")));
            let file = scope
                .require(&p, "file")
                .and_then(|n| scope.str(n, &p.path_of("file")));
            LogOutputKind::File(PathBuf::from(dir?).join(file?))
        }
        other => {
            let message = format!("unknown output type `{other}`; expected `file` or `stdout`");
            scope.error(type_node.line, &type_path, message);
            return None;
        }
    };
    Some(LogOutput {
        name: name?.to_owned(),
        kind,
    })
}

fn log_level(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<LogLevel> {
    let text = scope.str(node, path)?;
    let level = LOG_LEVELS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|&(_, level)| level);
    if level.is_none() {
        let message =
            format!("unknown log level `{text}`; expected trace, debug, info, warn or error");
        scope.error(node.line, path, message);
    }
    level
}

/// Reads `outputs: [name, ...]`, each of which must be a defined output.
fn output_refs(
    f: &Fields<'_>,
    defined: &[LogOutput],
    into: &mut Vec<String>,
    scope: &mut Scope<'_>,
) -> bool {
    let Some(node) = f.get("outputs") else {
        return true;
    };
    let path = f.path_of("outputs");
    let Some(items) = scope.seq(node, &path) else {
        return false;
    };
    let mut ok = true;
    for (i, name) in items.iter().enumerate() {
        let Some(name) = scope.str(name, &item(&path, i)) else {
            ok = false;
            continue;
        };
        if defined.iter().any(|o| o.name == name) {
            into.push(name.to_owned());
        } else {
            let message = format!("no output called `{name}` in `logging.outputs`");
            scope.error(items[i].line, &item(&path, i), message);
            ok = false;
        }
    }
    ok
}
