//! The claim checks of `jwt-validation-flex`: the values of `mandatoryCustomClaims` and
//! `nonMandatoryCustomClaims`, and `clientIdExpression`, compiled at load and evaluated on a
//! verified token's claims.
//!
//! Flex takes DataWeave over `vars.claimSet` there. Ringwall compiles the forms claim checks
//! use and refuses the rest with the list of what it supports:
//!
//! - a value without `#[...]`: the claim equals it (a string claim, or a number or boolean
//!   written the same way);
//! - `#[vars.claimSet.name == 'value']` and `!=`, against a string, a number, `true` or `false`;
//! - `#[vars.claimSet.name contains 'value']`: an element of a list claim, or a substring of a
//!   string claim (DataWeave's `contains`);
//! - `#[vars.claimSet.name matches /regex/]`: the whole string claim matches;
//! - several of these joined by `and` or by `or` (mixing the two needs parentheses).
//!
//! A claim is `vars.claimSet.name`, `vars.claimSet['name']` or a path into an object claim
//! (`vars.claimSet.realm_access.roles`); an absent claim equals nothing.

use regex::Regex;
use serde_json::{Map, Value};

use crate::policy::expr::Cursor;

const SUPPORTED: &str = "supported: a literal value, or #[vars.claimSet.name == 'value'] \
     (also !=), #[vars.claimSet.name contains 'value'], #[vars.claimSet.name matches /regex/], \
     joined by `and` or by `or`";

/// Where a claim is in the claim set: `vars.claimSet.a.b` is `["a", "b"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClaimPath(Vec<String>);

impl ClaimPath {
    pub fn get<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(first)?;
        for step in rest {
            value = value.as_object()?.get(step)?;
        }
        Some(value).filter(|v| !v.is_null())
    }
}

/// What one custom claim entry asks of the claim set.
#[derive(Debug)]
pub(super) enum Check {
    /// The claim named by the entry's `key` equals this text.
    Literal(String),
    Condition(Condition),
}

impl Check {
    /// Compiles an entry's `value`.
    pub fn parse(text: &str) -> Result<Check, String> {
        match expression_body(text) {
            None => Ok(Check::Literal(text.to_owned())),
            Some(body) => {
                let mut p = Parser::new(body);
                let condition = p
                    .condition()
                    .and_then(|c| p.end().map(|()| c))
                    .map_err(|why| {
                        format!("unsupported claim expression `{text}`: {why}; {SUPPORTED}")
                    })?;
                Ok(Check::Condition(condition))
            }
        }
    }

    /// Whether the claim set passes, `claim` being the value under the entry's `key`.
    pub fn holds(&self, claim: &Value, claims: &Map<String, Value>) -> bool {
        match self {
            Check::Literal(text) => match claim {
                Value::String(s) => s == text,
                Value::Number(n) => n.to_string() == *text,
                Value::Bool(b) => (if *b { "true" } else { "false" }) == text,
                _ => false,
            },
            Check::Condition(c) => c.holds(claims),
        }
    }
}

/// Compiles `clientIdExpression`: one claim, `#[vars.claimSet.client_id]`.
pub(super) fn client_id_path(text: &str) -> Result<ClaimPath, String> {
    let why = |why: &str| {
        format!(
            "unsupported client ID expression `{text}`: {why}; supported: \
             #[vars.claimSet.name] or #[vars.claimSet['name']]"
        )
    };
    let body = expression_body(text).ok_or_else(|| why("expected an expression in #[...]"))?;
    let mut p = Parser::new(body);
    let path = p.claim().map_err(|e| why(&e))?;
    p.end().map_err(|e| why(&e))?;
    Ok(path)
}

fn expression_body(text: &str) -> Option<&str> {
    text.trim()
        .strip_prefix("#[")
        .and_then(|rest| rest.strip_suffix(']'))
}

#[derive(Debug)]
pub(super) enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Compare {
        claim: ClaimPath,
        op: Op,
        value: Literal,
    },
    Matches {
        claim: ClaimPath,
        regex: Regex,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Eq,
    Ne,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
}

impl Literal {
    /// DataWeave's `==` on a claim: same type, same value.
    fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (Literal::Str(a), Value::String(b)) => a == b,
            (Literal::Num(a), Value::Number(b)) => b.as_f64() == Some(*a),
            (Literal::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl Condition {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        match self {
            Condition::All(parts) => parts.iter().all(|c| c.holds(claims)),
            Condition::Any(parts) => parts.iter().any(|c| c.holds(claims)),
            Condition::Compare { claim, op, value } => {
                let found = claim.get(claims);
                match op {
                    Op::Eq => found.is_some_and(|v| value.equals(v)),
                    Op::Ne => !found.is_some_and(|v| value.equals(v)),
                    Op::Contains => match (found, value) {
                        (Some(Value::Array(items)), _) => items.iter().any(|v| value.equals(v)),
                        (Some(Value::String(s)), Literal::Str(part)) => s.contains(part.as_str()),
                        _ => false,
                    },
                }
            }
            Condition::Matches { claim, regex } => claim
                .get(claims)
                .and_then(Value::as_str)
                .is_some_and(|s| regex.is_match(s)),
        }
    }
}

// === The parser ===

/// Claim checks read with the expressions' tokens ([`Cursor`]).
struct Parser<'s>(Cursor<'s>);

impl<'s> std::ops::Deref for Parser<'s> {
    type Target = Cursor<'s>;
    fn deref(&self) -> &Cursor<'s> {
        &self.0
    }
}

impl std::ops::DerefMut for Parser<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        Parser(Cursor::new(src))
    }

    /// A keyword: `token` not followed by an identifier character.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_spaces();
        let Some(after) = self.rest().strip_prefix(word) else {
            return false;
        };
        if !after.starts_with(is_ident) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.skip_spaces();
        match self.rest() {
            "" => Ok(()),
            rest => Err(format!("unexpected `{rest}`")),
        }
    }

    /// Comparisons joined by `and` or by `or`.
    fn condition(&mut self) -> Result<Condition, String> {
        let first = self.operand()?;
        let mut parts = vec![first];
        let mut joiner: Option<&str> = None;
        loop {
            let word = if self.eat_word("and") {
                "and"
            } else if self.eat_word("or") {
                "or"
            } else {
                break;
            };
            if joiner.is_some_and(|j| j != word) {
                return Err("`and` and `or` mixed without parentheses".into());
            }
            joiner = Some(word);
            parts.push(self.operand()?);
        }
        Ok(match joiner {
            None => parts.remove(0),
            Some("and") => Condition::All(parts),
            Some(_) => Condition::Any(parts),
        })
    }

    /// `( condition )` or one comparison.
    fn operand(&mut self) -> Result<Condition, String> {
        if self.eat("(") {
            let inner = self.condition()?;
            if !self.eat(")") {
                return Err("expected `)`".into());
            }
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Condition, String> {
        self.skip_spaces();
        if !self.rest().starts_with("vars.") {
            // `'value' == vars.claimSet.name`
            let value = self.literal()?;
            let op = self.equality()?;
            let claim = self.claim()?;
            return Ok(Condition::Compare { claim, op, value });
        }
        let claim = self.claim()?;
        if self.eat_word("contains") {
            let value = self.literal()?;
            return Ok(Condition::Compare {
                claim,
                op: Op::Contains,
                value,
            });
        }
        if self.eat_word("matches") {
            let regex = self.regex()?;
            return Ok(Condition::Matches { claim, regex });
        }
        let op = self.equality()?;
        let value = self.literal()?;
        Ok(Condition::Compare { claim, op, value })
    }

    fn equality(&mut self) -> Result<Op, String> {
        if self.eat("==") {
            Ok(Op::Eq)
        } else if self.eat("!=") {
            Ok(Op::Ne)
        } else {
            Err(format!(
                "expected ==, !=, contains or matches at `{}`",
                self.rest().trim()
            ))
        }
    }

    /// `vars.claimSet` followed by `.name` or `['name']` steps.
    fn claim(&mut self) -> Result<ClaimPath, String> {
        if !self.eat("vars.claimSet") {
            return Err(format!(
                "`{}` is not a claim: expected vars.claimSet.name",
                self.rest().trim()
            ));
        }
        let mut path = Vec::new();
        loop {
            if self.rest().starts_with('.') {
                self.pos += 1;
                let name = self.identifier();
                if name.is_empty() {
                    return Err("expected a claim name after `.`".into());
                }
                path.push(name.to_owned());
            } else if self.rest().starts_with('[') {
                self.pos += 1;
                let name = self.string()?;
                if !self.eat("]") {
                    return Err("expected `]` after the claim name".into());
                }
                path.push(name);
            } else {
                break;
            }
        }
        if path.is_empty() {
            return Err("expected a claim name after vars.claimSet".into());
        }
        Ok(ClaimPath(path))
    }

    fn identifier(&mut self) -> &'s str {
        self.take_while(is_ident)
    }

    fn literal(&mut self) -> Result<Literal, String> {
        self.skip_spaces();
        let rest = self.rest();
        if rest.starts_with(['\'', '"']) {
            return self.string().map(Literal::Str);
        }
        if self.eat_word("true") {
            return Ok(Literal::Bool(true));
        }
        if self.eat_word("false") {
            return Ok(Literal::Bool(false));
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '.' | 'e' | 'E' | '+')))
            .unwrap_or(rest.len());
        match rest[..len].parse::<f64>() {
            Ok(n) if len > 0 && n.is_finite() => {
                self.pos += len;
                Ok(Literal::Num(n))
            }
            _ => Err(format!(
                "expected a string, a number, true or false at `{}`",
                rest.trim()
            )),
        }
    }

    /// `/regex/`, matched against the whole claim.
    fn regex(&mut self) -> Result<Regex, String> {
        self.skip_spaces();
        let rest = self.rest();
        let Some(body) = rest.strip_prefix('/') else {
            return Err("expected /regex/ after matches".into());
        };
        // The closing slash is the first one not escaped.
        let mut escaped = false;
        let end = body.char_indices().find_map(|(i, c)| {
            let closes = c == '/' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i)
        });
        let Some(end) = end else {
            return Err("unterminated /regex/".into());
        };
        let pattern = body[..end].replace("\\/", "/");
        self.pos += end + 2;
        Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("invalid regex: {e}"))
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        let Value::Object(map) = json!({
            "sub": "alice",
            "roles": ["admin", "reader"],
            "scope": "orders:read orders:write",
            "level": 3,
            "staff": true,
            "email": "alice@example.com",
            "realm_access": {"roles": ["ops"]},
        }) else {
            unreachable!()
        };
        map
    }

    fn holds(value: &str, key: &str) -> bool {
        let check = Check::parse(value).expect(value);
        let claims = claims();
        check.holds(claims.get(key).unwrap_or(&Value::Null), &claims)
    }

    #[test]
    fn literals_equal_scalar_claims() {
        assert!(holds("alice", "sub"));
        assert!(!holds("bob", "sub"));
        assert!(holds("3", "level"));
        assert!(holds("true", "staff"));
        // A list is not equal to one of its elements: that is `contains`.
        assert!(!holds("admin", "roles"));
    }

    #[test]
    fn comparisons_follow_dataweave() {
        assert!(holds("#[vars.claimSet.sub == 'alice']", "sub"));
        assert!(holds("#[ vars.claimSet['sub'] == \"alice\" ]", "sub"));
        assert!(holds("#['alice' == vars.claimSet.sub]", "sub"));
        assert!(!holds("#[vars.claimSet.sub != 'alice']", "sub"));
        assert!(holds("#[vars.claimSet.level == 3]", "level"));
        // Types differ: a number is not its text.
        assert!(!holds("#[vars.claimSet.level == '3']", "level"));
        assert!(holds("#[vars.claimSet.staff == true]", "staff"));
        assert!(holds("#[vars.claimSet.roles contains 'admin']", "roles"));
        assert!(!holds("#[vars.claimSet.roles contains 'owner']", "roles"));
        assert!(holds(
            "#[vars.claimSet.scope contains 'orders:write']",
            "scope"
        ));
        assert!(holds(
            "#[vars.claimSet.realm_access.roles contains 'ops']",
            "realm_access"
        ));
        assert!(holds(
            "#[vars.claimSet.email matches /[a-z]+@example\\.com/]",
            "email"
        ));
        // The whole claim must match.
        assert!(!holds("#[vars.claimSet.email matches /alice/]", "email"));
        // An absent claim equals nothing and differs from everything.
        assert!(!holds("#[vars.claimSet.nope == 'x']", "sub"));
        assert!(holds("#[vars.claimSet.nope != 'x']", "sub"));
    }

    #[test]
    fn conditions_join() {
        let any =
            "#[(vars.claimSet.roles contains 'owner') or (vars.claimSet.roles contains 'admin')]";
        assert!(holds(any, "roles"));
        let all = "#[vars.claimSet.roles contains 'admin' and vars.claimSet.level == 4]";
        assert!(!holds(all, "roles"));
        let nested = "#[vars.claimSet.staff == true and (vars.claimSet.level == 4 or vars.claimSet.level == 3)]";
        assert!(holds(nested, "staff"));
        // `order` is not `or`.
        assert!(Check::parse("#[vars.claimSet.order == 1]").is_ok());
    }

    #[test]
    fn other_dataweave_is_refused_with_the_supported_list() {
        for bad in [
            "#[vars.claimSet.scope]",
            "#[vars.claimSet.a == 'x' and vars.claimSet.b == 'y' or vars.claimSet.c == 'z']",
            "#[vars.claimSet.roles map ($ == 'a')]",
            "#[attributes.headers['x'] == 'a']",
            "#[vars.claimSet == 'a']",
            "#[vars.claimSet.a matches /(/]",
            "#[vars.claimSet.a == 'x]",
            "#[(vars.claimSet.a == 'x']",
            "#[vars.claimSet.a == payload]",
        ] {
            let e = Check::parse(bad).expect_err(bad);
            assert!(
                e.starts_with(&format!("unsupported claim expression `{bad}`")),
                "{e}"
            );
            assert!(e.ends_with(SUPPORTED), "{e}");
        }
    }

    #[test]
    fn client_id_names_one_claim() {
        let path = client_id_path("#[vars.claimSet.client_id]").expect("valid");
        let Value::Object(claims) = json!({"client_id": "app-1"}) else {
            unreachable!()
        };
        assert_eq!(path.get(&claims), Some(&json!("app-1")));
        assert!(client_id_path("#[vars.claimSet['azp']]").is_ok());
        let e = client_id_path("client_id").expect_err("literal");
        assert!(e.contains("expected an expression in #[...]"), "{e}");
        let e = client_id_path("#[attributes.headers['x']]").expect_err("header");
        assert!(e.contains("is not a claim"), "{e}");
    }
}
