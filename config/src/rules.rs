//! Request-matching rules (`rules[{path, methods, host, headers}]`), compiled at load.
//!
//! Every pattern is a regex anchored at both ends, so `path: /orders` matches only `/orders`
//! and `/orders/.*` is needed for the subtree. Fields within a rule must all match; a list of
//! rules matches when any rule does, and an empty list matches every request.

use regex::{Regex, RegexBuilder};

use crate::error::{child, item, Scope};
use crate::node::Node;

/// Bounds the compiled size of one pattern; real rules are tiny.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub(crate) path: Option<Regex>,
    pub(crate) methods: Option<Regex>,
    pub(crate) host: Option<Regex>,
    /// Lower-cased header name and the pattern its value must match.
    pub(crate) headers: Vec<(String, Regex)>,
}

impl Rule {
    /// The rule's path pattern, anchored at both ends, when it has one: what an index over
    /// many routes can match in one pass before the rules are checked whole.
    pub fn path_pattern(&self) -> Option<&Regex> {
        self.path.as_ref()
    }

    /// Whether a request matches every field of this rule.
    ///
    /// `path` is the request path after the base path; a query string, if present, is ignored
    /// and an empty path counts as `/`. `host` is the `Host` header (its port is ignored).
    /// `header` looks a request header up by lower-case name.
    pub fn matches<'h>(
        &self,
        method: &str,
        path: &str,
        host: Option<&str>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.is_match(method) {
                return false;
            }
        }
        if let Some(pattern) = &self.path {
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            let path = if path.is_empty() { "/" } else { path };
            if !pattern.is_match(path) {
                return false;
            }
        }
        if let Some(pattern) = &self.host {
            match host {
                Some(host) if pattern.is_match(without_port(host)) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(name, pattern)| header(name).is_some_and(|value| pattern.is_match(value)))
    }
}

/// Whether any of `rules` matches; no rules match everything.
pub(crate) fn any_matches<'h>(
    rules: &[Rule],
    method: &str,
    path: &str,
    host: Option<&str>,
    header: impl Fn(&str) -> Option<&'h str>,
) -> bool {
    rules.is_empty()
        || rules
            .iter()
            .any(|rule| rule.matches(method, path, host, &header))
}

fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`: the brackets belong to the address.
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

// === loading ===

/// Compiles a `rules` sequence found at `path`.
pub(crate) fn parse_rules(node: &Node, path: &str, scope: &mut Scope<'_>) -> Vec<Rule> {
    let Some(items) = scope.seq(node, path) else {
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| parse_rule(rule, &item(path, i), scope))
        .collect()
}

fn parse_rule(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Rule> {
    let fields = scope.map(node, path, &["path", "methods", "host", "headers"])?;
    let mut ok = true;
    let mut pattern = |key: &str, case_insensitive: bool, scope: &mut Scope<'_>| {
        let node = fields.get(key)?;
        let compiled = compile(node, &fields.path_of(key), case_insensitive, scope);
        ok &= compiled.is_some();
        compiled
    };
    let mut rule = Rule {
        path: pattern("path", false, scope),
        methods: pattern("methods", true, scope),
        host: pattern("host", true, scope),
        headers: Vec::new(),
    };
    if let Some(headers) = fields.get("headers") {
        let path = fields.path_of("headers");
        match headers.as_map() {
            Some(entries) => {
                for (name, value) in entries {
                    let compiled = compile(value, &child(&path, name), false, scope);
                    ok &= compiled.is_some();
                    rule.headers
                        .extend(compiled.map(|re| (name.to_ascii_lowercase(), re)));
                }
            }
            None => {
                scope.expected(headers, &path, "a mapping of header name to pattern");
                ok = false;
            }
        }
    }
    ok.then_some(rule)
}

fn compile(
    node: &Node,
    path: &str,
    case_insensitive: bool,
    scope: &mut Scope<'_>,
) -> Option<Regex> {
    let source = scope.str(node, path)?;
    let anchored = format!("^(?:{source})$");
    match RegexBuilder::new(&anchored)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            // The syntax error spans lines and quotes our anchored form: keep its last line.
            let message = match &e {
                regex::Error::Syntax(text) => {
                    let reason = text.lines().rev().find_map(|l| l.strip_prefix("error: "));
                    match reason {
                        Some(reason) => format!("invalid regular expression `{source}`: {reason}"),
                        None => format!("invalid regular expression `{source}`"),
                    }
                }
                regex::Error::CompiledTooBig(_) => {
                    format!("regular expression `{source}` is too large")
                }
                other => format!("regular expression `{source}`: {other}"),
            };
            scope.error(node.line, path, message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Diagnostics;
    use crate::yaml::parse_documents;

    fn compile_rules(yaml: &str) -> (Vec<Rule>, Diagnostics) {
        let mut diag = Diagnostics::default();
        let mut scope = Scope::new(&mut diag, "r.yaml");
        let docs = parse_documents(yaml, &mut scope);
        let rules = parse_rules(&docs[0], "rules", &mut scope);
        (rules, diag)
    }

    fn no_headers(_: &str) -> Option<&'static str> {
        None
    }

    #[test]
    fn path_is_anchored_and_ignores_the_query() {
        let (rules, diag) = compile_rules("- path: /orders/.*\n");
        assert!(diag.errors.is_empty());
        let rule = &rules[0];
        assert!(rule.matches("GET", "/orders/1", None, no_headers));
        assert!(rule.matches("GET", "/orders/1?x=/y", None, no_headers));
        assert!(!rule.matches("GET", "/orders", None, no_headers));
        assert!(!rule.matches("GET", "/v1/orders/1", None, no_headers));
        let (rules, _) = compile_rules("- path: /\n");
        assert!(rules[0].matches("GET", "", None, no_headers));
        assert!(rules[0].matches("GET", "?q=1", None, no_headers));
    }

    #[test]
    fn methods_are_case_insensitive_full_matches() {
        let (rules, _) = compile_rules("- methods: GET|POST\n");
        let rule = &rules[0];
        assert!(rule.matches("GET", "/", None, no_headers));
        assert!(rule.matches("post", "/", None, no_headers));
        assert!(!rule.matches("GETX", "/", None, no_headers));
        assert!(!rule.matches("DELETE", "/", None, no_headers));
    }

    #[test]
    fn host_ignores_port_and_case() {
        let (rules, _) = compile_rules("- host: api\\.example\\.com\n");
        let rule = &rules[0];
        assert!(rule.matches("GET", "/", Some("API.example.com:8080"), no_headers));
        assert!(rule.matches("GET", "/", Some("api.example.com"), no_headers));
        assert!(!rule.matches("GET", "/", Some("api.example.com.evil"), no_headers));
        assert!(!rule.matches("GET", "/", None, no_headers));
        let (rules, _) = compile_rules("- host: '::1'\n");
        assert!(rules[0].matches("GET", "/", Some("[::1]:80"), no_headers));
    }

    #[test]
    fn headers_fields_and_rules_combine() {
        let yaml = "- path: /a\n  headers:\n    X-Version: v[12]\n- path: /b\n";
        let (rules, diag) = compile_rules(yaml);
        assert!(diag.errors.is_empty(), "{:?}", diag.errors);
        let v2 = |name: &str| (name == "x-version").then_some("v2");
        assert!(any_matches(&rules, "GET", "/a", None, v2));
        assert!(!any_matches(&rules, "GET", "/a", None, no_headers));
        assert!(!any_matches(&rules, "GET", "/a", None, |_| Some("v3")));
        assert!(any_matches(&rules, "GET", "/b", None, no_headers));
        assert!(!any_matches(&rules, "GET", "/c", None, v2));
        assert!(any_matches(&[], "GET", "/c", None, no_headers));
    }

    #[test]
    fn bad_patterns_are_located() {
        let (rules, diag) = compile_rules("- methods: GET\n  path: /orders/(\n");
        assert!(rules.is_empty());
        assert_eq!(diag.errors.len(), 1);
        let error = &diag.errors[0];
        assert_eq!(error.line, 2);
        assert_eq!(error.field.as_deref(), Some("rules[0].path"));
        assert_eq!(
            error.message,
            "invalid regular expression `/orders/(`: unclosed group"
        );
        let (_, diag) = compile_rules("- paht: /x\n");
        assert_eq!(diag.errors[0].field.as_deref(), Some("rules[0].paht"));
        assert!(diag.errors[0].message.contains("did you mean `path`"));
    }
}
