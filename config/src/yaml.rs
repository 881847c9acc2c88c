//! Parsing a file's text into one [`Node`] tree per `---` document.
//!
//! saphyr gives every node a span (1-based lines); this module turns its tree into the crate's
//! own [`Node`], reporting what a Flex resource never needs (tags, complex keys, unresolvable
//! aliases, absurd nesting) instead of passing it on. A syntax error stops saphyr, so it hides
//! the rest of that file; the other files are still read.

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};

use crate::error::Scope;
use crate::node::{Node, Value};

/// Deeper than any resource needs, shallow enough that converting cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// The non-empty documents of `text`, in order. Public so that a policy reading a file its
/// `config` names (a list of clients) reports that file's errors with their lines.
pub fn parse_documents(text: &str, scope: &mut Scope<'_>) -> Vec<Node> {
    let docs = match MarkedYamlOwned::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => {
            let message = format!(
                "YAML syntax error: {} (column {})",
                e.info(),
                e.marker().col() + 1
            );
            scope.error(e.marker().line(), "", message);
            return Vec::new();
        }
    };
    docs.into_iter()
        .filter(|doc| {
            !matches!(
                doc.data,
                YamlDataOwned::BadValue | YamlDataOwned::Value(ScalarOwned::Null)
            )
        })
        .map(|doc| convert(doc, 0, scope))
        .collect()
}

fn convert(node: MarkedYamlOwned, depth: usize, scope: &mut Scope<'_>) -> Node {
    let line = node.span.start.line();
    let value = match node.data {
        YamlDataOwned::Value(scalar) => match scalar {
            ScalarOwned::Null => Value::Null,
            ScalarOwned::Boolean(b) => Value::Bool(b),
            ScalarOwned::Integer(i) => Value::Int(i),
            ScalarOwned::FloatingPoint(f) => Value::Float(f.0),
            ScalarOwned::String(s) => Value::Str(s),
        },
        YamlDataOwned::Representation(s, _, _) => Value::Str(s),
        YamlDataOwned::Sequence(_) | YamlDataOwned::Mapping(_) if depth >= MAX_DEPTH => {
            let message = format!("nested more than {MAX_DEPTH} levels deep");
            scope.error(line, "", message);
            Value::Null
        }
        YamlDataOwned::Sequence(items) => Value::Seq(
            items
                .into_iter()
                .map(|item| convert(item, depth + 1, scope))
                .collect(),
        ),
        YamlDataOwned::Mapping(entries) => {
            let mut map = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key_line = key.span.start.line();
                let Some(key) = key_text(key) else {
                    scope.error(key_line, "", "mapping keys must be plain scalars");
                    continue;
                };
                let mut value = convert(value, depth + 1, scope);
                value.line = key_line;
                map.push((key, value));
            }
            Value::Map(map)
        }
        YamlDataOwned::Tagged(tag, _) => {
            scope.error(
                line,
                "",
                format!("YAML tags such as `{tag}` are not supported"),
            );
            Value::Null
        }
        YamlDataOwned::Alias(_) => {
            scope.error(line, "", "unresolved YAML alias");
            Value::Null
        }
        YamlDataOwned::BadValue => {
            scope.error(line, "", "invalid value (does it match its `!!` tag?)");
            Value::Null
        }
    };
    Node::new(line, value)
}

/// A scalar key as text (`200:` and `true:` read as the strings "200" and "true").
fn key_text(key: MarkedYamlOwned) -> Option<String> {
    match key.data {
        YamlDataOwned::Value(ScalarOwned::String(s)) | YamlDataOwned::Representation(s, _, _) => {
            Some(s)
        }
        YamlDataOwned::Value(ScalarOwned::Integer(i)) => Some(i.to_string()),
        YamlDataOwned::Value(ScalarOwned::Boolean(b)) => Some(b.to_string()),
        YamlDataOwned::Value(ScalarOwned::FloatingPoint(f)) => Some(f.0.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Diagnostics;

    fn parse(text: &str) -> (Vec<Node>, Diagnostics) {
        let mut diag = Diagnostics::default();
        let docs = parse_documents(text, &mut Scope::new(&mut diag, "t.yaml"));
        (docs, diag)
    }

    #[test]
    fn lines_are_one_based_and_values_take_their_key_line() {
        let (docs, diag) = parse("# comment\na: 1\nb:\n  - x\n  - y: 2\n---\nc: true\n");
        assert!(diag.errors.is_empty(), "{:?}", diag.errors);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 2);
        let b = docs[0].get("b").expect("b");
        assert_eq!(b.line, 3);
        let items = b.as_seq().expect("seq");
        assert_eq!(items[0].line, 4);
        assert_eq!(items[1].get("y").map(|n| n.line), Some(5));
        assert_eq!(docs[1].get("c").map(|n| n.line), Some(7));
        assert_eq!(docs[1].get("c").and_then(Node::as_bool), Some(true));
    }

    #[test]
    fn scalars_keep_their_types() {
        let (docs, _) = parse("a: 1\nb: 1.5\nc: '1'\nd: ~\ne: x\n");
        let doc = &docs[0];
        assert_eq!(doc.get("a").map(|n| &n.value), Some(&Value::Int(1)));
        assert_eq!(doc.get("b").map(|n| &n.value), Some(&Value::Float(1.5)));
        assert_eq!(doc.get("c").and_then(Node::as_str), Some("1"));
        assert_eq!(doc.get("d").map(Node::is_null), Some(true));
        assert_eq!(doc.get("e").and_then(Node::as_str), Some("x"));
    }

    #[test]
    fn empty_documents_are_skipped() {
        let (docs, diag) = parse("---\n# nothing\n---\na: 1\n---\n");
        assert!(diag.errors.is_empty());
        assert_eq!(docs.len(), 1);
        let (docs, diag) = parse("");
        assert!(docs.is_empty() && diag.errors.is_empty());
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_are_located() {
        let (_, diag) = parse("a: 1\nb: [1, 2\n");
        assert_eq!(diag.errors.len(), 1);
        assert!(diag.errors[0].message.starts_with("YAML syntax error"));
        let (_, diag) = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(diag.errors.len(), 1);
        assert_eq!(diag.errors[0].line, 3);
        assert!(diag.errors[0].message.contains("duplicated key"));
    }

    #[test]
    fn tags_and_deep_nesting_are_rejected() {
        let (_, diag) = parse("a: !custom x\n");
        assert!(
            diag.errors[0].message.contains("`!custom`"),
            "{:?}",
            diag.errors
        );
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let (_, diag) = parse(&deep);
        assert!(diag.errors[0].message.contains("nested more than"));
    }

    #[test]
    fn aliases_are_expanded() {
        let (docs, diag) = parse("a: &x {b: 1}\nc: *x\n");
        assert!(diag.errors.is_empty());
        assert_eq!(
            docs[0]
                .get("c")
                .and_then(|c| c.get("b"))
                .and_then(Node::as_i64),
            Some(1)
        );
    }
}
