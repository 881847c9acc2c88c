//! The YAML tree the loader reads, with a line on every node, and checked access to it.
//!
//! [`Node`] is public because policy `config` blocks are handed to the proxy as-is (after
//! environment substitution) for each policy to interpret. The `Scope` accessors below are how
//! the loader reads a resource: each one checks the type, reports a located error when it is
//! wrong, and returns `None` so the caller can carry on with the next field.

use crate::error::{child, did_you_mean, Scope};

/// A YAML value and the line it sits on.
///
/// A value inside a mapping carries the line of its key, so errors about a nested block point
/// at the field that holds it; sequence items carry their own line.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based.
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; the loader rejects duplicate keys.
    Map(Vec<(String, Node)>),
}

impl Value {
    /// How the value's type reads in a message: "a string", "an integer", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a sequence",
            Value::Map(_) => "a mapping",
        }
    }
}

// === impl Node ===

impl Node {
    pub fn new(line: usize, value: Value) -> Self {
        Node { line, value }
    }

    /// The value under `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// Integers and floats alike.
    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// A mapping whose keys have been checked against the accepted ones.
pub struct Fields<'n> {
    pub path: String,
    pub line: usize,
    entries: &'n [(String, Node)],
}

impl<'n> Fields<'n> {
    /// The value under `key`; an explicit `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, v)| k == key && !v.is_null())
            .map(|(_, v)| v)
    }

    pub fn path_of(&self, key: &str) -> String {
        child(&self.path, key)
    }
}

// === checked access ===

impl Scope<'_> {
    /// Reports "expected X, found Y" for `node`.
    pub fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let message = format!("expected {what}, found {}", node.value.kind());
        self.error(node.line, path, message);
    }

    /// `node` as a mapping, reporting every key not in `accepted`.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, accepted: &[&str]) -> Option<Fields<'n>> {
        let fields = self.any_map(node, path)?;
        self.reject_unknown(&fields, accepted);
        Some(fields)
    }

    /// `node` as a mapping, whatever its keys.
    pub fn any_map<'n>(&mut self, node: &'n Node, path: &str) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.expected(node, path, "a mapping");
            return None;
        };
        Some(Fields {
            path: path.to_owned(),
            line: node.line,
            entries,
        })
    }

    /// Reports every key of `fields` not in `accepted`.
    pub fn reject_unknown(&mut self, fields: &Fields<'_>, accepted: &[&str]) {
        for (key, value) in fields.entries {
            if !accepted.contains(&key.as_str()) {
                let message = unknown_field(key, accepted);
                self.error(value.line, &fields.path_of(key), message);
            }
        }
    }

    /// The field `key` of `fields`, reporting it missing otherwise.
    pub fn require<'n>(&mut self, fields: &Fields<'n>, key: &str) -> Option<&'n Node> {
        let value = fields.get(key);
        if value.is_none() {
            let message = format!("missing required field `{key}`");
            self.error(fields.line, &fields.path_of(key), message);
        }
        value
    }

    pub fn str<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        let s = node.as_str();
        if s.is_none() {
            self.expected(node, path, "a string");
        }
        s
    }

    pub fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        let i = node.as_i64();
        if i.is_none() {
            self.expected(node, path, "an integer");
        }
        i
    }

    /// An integer in `range`, reporting which range otherwise.
    pub fn int_in(
        &mut self,
        node: &Node,
        path: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let i = self.int(node, path)?;
        if range.contains(&i) {
            return Some(i);
        }
        let message = if *range.end() == i64::MAX {
            format!("must be at least {}, found {i}", range.start())
        } else {
            format!(
                "must be between {} and {}, found {i}",
                range.start(),
                range.end()
            )
        };
        self.error(node.line, path, message);
        None
    }

    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        let b = node.as_bool();
        if b.is_none() {
            self.expected(node, path, "a boolean");
        }
        b
    }

    /// An integer or a float.
    pub fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        let f = node.as_f64();
        if f.is_none() {
            self.expected(node, path, "a number");
        }
        f
    }

    pub fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        let items = node.as_seq();
        if items.is_none() {
            self.expected(node, path, "a sequence");
        }
        items
    }
}

fn unknown_field(key: &str, accepted: &[&str]) -> String {
    let hint = did_you_mean(key, accepted.iter().copied())
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    if accepted.is_empty() {
        return format!("unknown field `{key}`{hint}; no fields are accepted here");
    }
    let list: Vec<String> = accepted.iter().map(|a| format!("`{a}`")).collect();
    format!(
        "unknown field `{key}`{hint}; accepted fields: {}",
        list.join(", ")
    )
}
