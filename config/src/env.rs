//! Environment variables in policy `config` blocks, substituted at load.
//!
//! A string that is exactly `$NAME`, or that contains `${NAME}`, takes the variable's value, so
//! secrets such as passwords need not be written into the resource files. Anything else that
//! merely contains a `$` (a regex, a DataWeave expression) is left alone. A variable that is not
//! set is an error: silently sending an empty password upstream would be worse.

use crate::error::{child, item, Scope};
use crate::node::{Node, Value};

/// Substitutes every string under `node` (whose field path is `path`), reporting each missing
/// variable at its line. Returns whether every variable was found.
pub(crate) fn substitute(
    node: &mut Node,
    path: &str,
    var: &dyn Fn(&str) -> Option<String>,
    scope: &mut Scope<'_>,
) -> bool {
    match &mut node.value {
        Value::Str(s) => {
            let mut missing = Vec::new();
            if let Some(expanded) = expand(s, var, &mut missing) {
                *s = expanded;
            }
            for name in &missing {
                let message = format!("environment variable `{name}` is not set");
                scope.error(node.line, path, message);
            }
            missing.is_empty()
        }
        // Not `all`: every missing variable is reported, not just the first.
        Value::Seq(items) => items.iter_mut().enumerate().fold(true, |ok, (i, value)| {
            substitute(value, &item(path, i), var, scope) && ok
        }),
        Value::Map(entries) => entries.iter_mut().fold(true, |ok, (key, value)| {
            substitute(value, &child(path, key), var, scope) && ok
        }),
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => true,
    }
}

/// The expanded text, or `None` when `s` references no variable. Missing names are pushed to
/// `missing`.
fn expand(
    s: &str,
    var: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> Option<String> {
    if let Some(name) = s.strip_prefix('$').filter(|name| is_name(name)) {
        let value = var(name);
        if value.is_none() {
            missing.push(name.to_owned());
        }
        return value;
    }
    if !s.contains("${") {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some((name, tail)) = after.split_once('}').filter(|(name, _)| is_name(name)) else {
            out.push_str(&rest[..start + 2]);
            rest = after;
            continue;
        };
        out.push_str(&rest[..start]);
        match var(name) {
            Some(value) => out.push_str(&value),
            None => missing.push(name.to_owned()),
        }
        changed = true;
        rest = tail;
    }
    out.push_str(rest);
    changed.then_some(out)
}

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Diagnostics;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER_NAME" => Some("alice".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(s: &str) -> (Option<String>, Vec<String>) {
        let mut missing = Vec::new();
        let out = expand(s, &env, &mut missing);
        (out, missing)
    }

    #[test]
    fn whole_and_embedded_references() {
        assert_eq!(run("$USER_NAME"), (Some("alice".into()), vec![]));
        assert_eq!(run("u=${USER_NAME}!"), (Some("u=alice!".into()), vec![]));
        assert_eq!(
            run("${USER_NAME}${EMPTY}/${USER_NAME}"),
            (Some("alice/alice".into()), vec![])
        );
    }

    #[test]
    fn other_dollars_are_left_alone() {
        for s in [
            "plain",
            "a$b",
            "^/x$",
            "$1",
            "${1}",
            "${",
            "${not closed",
            "#[attributes.headers['x']]",
        ] {
            assert_eq!(run(s), (None, vec![]), "{s}");
        }
        assert_eq!(
            run("${x-y} ${USER_NAME}"),
            (Some("${x-y} alice".into()), vec![])
        );
    }

    #[test]
    fn missing_variables_are_reported_at_their_line() {
        assert_eq!(run("$NOPE"), (None, vec!["NOPE".to_owned()]));
        let mut node = Node::new(
            3,
            Value::Map(vec![
                ("user".into(), Node::new(4, Value::Str("$USER_NAME".into()))),
                (
                    "password".into(),
                    Node::new(5, Value::Str("${SECRET}".into())),
                ),
            ]),
        );
        let mut diag = Diagnostics::default();
        let found = substitute(
            &mut node,
            "spec.config",
            &env,
            &mut Scope::new(&mut diag, "p.yaml"),
        );
        assert!(!found);
        assert_eq!(node.get("user").and_then(Node::as_str), Some("alice"));
        assert_eq!(diag.errors.len(), 1);
        assert_eq!(diag.errors[0].line, 5);
        assert_eq!(
            diag.errors[0].field.as_deref(),
            Some("spec.config.password")
        );
        assert_eq!(
            diag.errors[0].message,
            "environment variable `SECRET` is not set"
        );
    }
}
