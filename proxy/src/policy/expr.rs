//! The DataWeave expressions Flex policies accept where a value comes from the request or the
//! response (`keySelector`, `ipExpression`, `jwtOrigin`, header values, log messages).
//!
//! Flex evaluates full DataWeave; Ringwall compiles the forms policies use in practice at load
//! and refuses the rest with a message that lists what is supported:
//!
//! - `attributes.headers['name']` (or `attributes.headers.name`): the first header of that
//!   name, case-insensitively;
//! - `attributes.queryParams['name']`: the first query parameter of that name, as sent
//!   (not percent-decoded);
//! - `attributes.method`, `attributes.requestPath` (the whole path, without the query),
//!   `attributes.queryString`;
//! - `attributes.remoteAddress`: the connection's peer IP address (without the port, so that
//!   it can key a limit);
//! - `attributes.statusCode`, in the response phase;
//! - `attributes.clientCertificate.subjectDN`: the subject of the client's verified TLS
//!   certificate (`CN=client, O=Example`), as Mule's HTTP listener names it;
//! - `(<one of the above> splitBy "<separator>")[i]`, `i` negative from the end, to take one
//!   hop of `X-Forwarded-For`;
//! - string literals, and `++` joining any of these.
//!
//! A value without `#[...]` is a literal. Evaluation borrows from the request and allocates
//! nothing.

use std::fmt;
use std::net::IpAddr;

/// What an expression reads from. Requests and responses implement it; each attribute is
/// absent by default.
pub trait Attributes {
    /// The first header called `name` (given in lower case), compared case-insensitively.
    fn header(&self, name: &str) -> Option<&str>;
    /// Every line of the header called `name`, in order, as sent (not necessarily text).
    fn header_lines<'a>(&'a self, _name: &str, _each: &mut dyn FnMut(&'a [u8])) {}
    fn method(&self) -> Option<&str> {
        None
    }
    /// The request path, without the query.
    fn request_path(&self) -> Option<&str> {
        None
    }
    /// The raw query string, without the `?`.
    fn query(&self) -> Option<&str> {
        None
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        None
    }
    fn status_code(&self) -> Option<u16> {
        None
    }
    /// The subject DN of the client's verified TLS certificate.
    fn client_subject(&self) -> Option<&str> {
        None
    }
}

/// A compiled expression: one or more terms joined by `++`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Literal(String),
    Attr(Attr),
    /// `(attr splitBy "sep")[index]`.
    Split {
        attr: Attr,
        sep: String,
        index: isize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    /// Lower-cased name.
    Header(String),
    QueryParam(String),
    Method,
    RequestPath,
    QueryString,
    RemoteAddress,
    StatusCode,
    ClientSubject,
}

/// The value of one term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Str(&'a str),
    Ip(IpAddr),
    Status(u16),
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Ip(ip) => write!(f, "{ip}"),
            Value::Status(s) => write!(f, "{s}"),
        }
    }
}

impl Value<'_> {
    /// Whether the two values read the same as text, without building the text.
    pub fn same_text(&self, other: &Value<'_>) -> bool {
        match (*self, *other) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Status(a), Value::Status(b)) => a == b,
            (Value::Ip(a), Value::Ip(b)) => a == b,
            (Value::Status(n), Value::Str(s)) | (Value::Str(s), Value::Status(n)) => {
                s.parse::<u16>().is_ok_and(|m| m == n) && !s.starts_with(['+', '0'])
                    || (n == 0 && s == "0")
            }
            (Value::Ip(ip), Value::Str(s)) | (Value::Str(s), Value::Ip(ip)) => {
                s.parse::<IpAddr>().is_ok_and(|other| other == ip)
            }
            (Value::Status(_), Value::Ip(_)) | (Value::Ip(_), Value::Status(_)) => false,
        }
    }

    /// The value as an IP address: an address, or text that parses as one (surrounding spaces
    /// and an IPv6 address's brackets allowed).
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Value::Ip(ip) => Some(ip),
            Value::Str(s) => {
                let s = s.trim();
                let s = s
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .unwrap_or(s);
                s.parse().ok()
            }
            Value::Status(_) => None,
        }
    }
}

const SUPPORTED: &str = "supported: attributes.headers['name'], attributes.queryParams['name'], \
     attributes.method, attributes.requestPath, attributes.queryString, \
     attributes.remoteAddress, attributes.statusCode, attributes.clientCertificate.subjectDN, \
     (... splitBy \",\")[i], string literals \
     and ++";

impl Expr {
    /// Compiles `text`: `#[...]` is an expression, anything else a literal.
    pub fn parse(text: &str) -> Result<Expr, String> {
        let trimmed = text.trim();
        let Some(body) = trimmed
            .strip_prefix("#[")
            .and_then(|rest| rest.strip_suffix(']'))
        else {
            return Ok(Expr {
                terms: vec![Term::Literal(text.to_owned())],
            });
        };
        let mut p = Parser(Cursor::new(body));
        let mut terms = vec![p.term().map_err(|e| unsupported(text, &e))?];
        loop {
            p.skip_spaces();
            if p.eat("++") {
                terms.push(p.term().map_err(|e| unsupported(text, &e))?);
            } else if p.at_end() {
                break;
            } else {
                let rest = &p.src[p.pos..];
                return Err(unsupported(text, &format!("unexpected `{rest}`")));
            }
        }
        Ok(Expr { terms })
    }

    /// The header a single-term expression reads, if it reads one.
    pub fn header_name(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [Term::Attr(Attr::Header(name))
            | Term::Split {
                attr: Attr::Header(name),
                ..
            }] => Some(name),
            _ => None,
        }
    }

    /// A constant, or a single attribute: what a key or an address can be.
    pub fn is_single(&self) -> bool {
        self.terms.len() == 1
    }

    /// Whether the expression reads an attribute only responses have.
    pub fn reads_response(&self) -> bool {
        self.terms.iter().any(|t| {
            matches!(
                t,
                Term::Attr(Attr::StatusCode)
                    | Term::Split {
                        attr: Attr::StatusCode,
                        ..
                    }
            )
        })
    }

    /// The value of a single-term expression; `None` when the attribute is absent (or the
    /// expression joins several terms: use [`Expr::write`]).
    pub fn eval<'a>(&'a self, attrs: &'a impl Attributes) -> Option<Value<'a>> {
        match self.terms.as_slice() {
            [term] => term.eval(attrs),
            _ => None,
        }
    }

    /// Writes every term in turn; an absent attribute writes nothing. Returns whether every
    /// attribute was present.
    pub fn write(&self, attrs: &impl Attributes, out: &mut impl fmt::Write) -> bool {
        let mut all = true;
        for term in &self.terms {
            match term.eval(attrs) {
                Some(v) => {
                    let _ = write!(out, "{v}");
                }
                None => all = false,
            }
        }
        all
    }
}

fn unsupported(text: &str, why: &str) -> String {
    format!("unsupported expression `{text}`: {why}; {SUPPORTED}")
}

impl Term {
    fn eval<'a>(&'a self, attrs: &'a impl Attributes) -> Option<Value<'a>> {
        match self {
            Term::Literal(s) => Some(Value::Str(s)),
            Term::Attr(a) => a.eval(attrs),
            // Several lines of a header are one comma-separated list (RFC 9110 §5.3): a
            // proxy that appends a line of its own rather than extending the client's must
            // not leave the client's hop as the last one.
            Term::Split {
                attr: Attr::Header(name),
                sep,
                index,
            } => split_header(attrs, name, sep.as_bytes(), *index).map(Value::Str),
            Term::Split { attr, sep, index } => {
                let Value::Str(whole) = attr.eval(attrs)? else {
                    return None;
                };
                let count = whole.split(sep.as_str()).count();
                let i = if *index < 0 {
                    count.checked_sub(index.unsigned_abs())?
                } else {
                    index.unsigned_abs()
                };
                whole
                    .split(sep.as_str())
                    .nth(i)
                    .map(|s| Value::Str(s.trim()))
            }
        }
    }
}

impl Attr {
    fn eval<'a>(&'a self, attrs: &'a impl Attributes) -> Option<Value<'a>> {
        Some(match self {
            Attr::Header(name) => Value::Str(attrs.header(name)?),
            Attr::QueryParam(name) => Value::Str(query_param(attrs.query()?, name)?),
            Attr::Method => Value::Str(attrs.method()?),
            Attr::RequestPath => Value::Str(attrs.request_path()?),
            Attr::QueryString => Value::Str(attrs.query()?),
            Attr::RemoteAddress => Value::Ip(attrs.remote_ip()?),
            Attr::StatusCode => Value::Status(attrs.status_code()?),
            Attr::ClientSubject => Value::Str(attrs.client_subject()?),
        })
    }
}

/// Item `index` (negative: from the end) of every line of header `name` split on `sep`,
/// trimmed; `None` when there is no such item or it is not text.
fn split_header<'a>(
    attrs: &'a impl Attributes,
    name: &str,
    sep: &'a [u8],
    index: isize,
) -> Option<&'a str> {
    let mut total = 0usize;
    attrs.header_lines(name, &mut |line| total += split_on(line, sep).count());
    let want = if index < 0 {
        total.checked_sub(index.unsigned_abs())?
    } else {
        index.unsigned_abs()
    };
    let mut seen = 0usize;
    let mut found: Option<&'a [u8]> = None;
    attrs.header_lines(name, &mut |line| {
        for item in split_on(line, sep) {
            if seen == want {
                found = Some(item);
            }
            seen += 1;
        }
    });
    std::str::from_utf8(found?.trim_ascii()).ok()
}

/// `value` split on every occurrence of `sep` (not empty).
fn split_on<'v>(value: &'v [u8], sep: &'v [u8]) -> impl Iterator<Item = &'v [u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(sep.len()).position(|w| w == sep) {
            Some(at) => {
                rest = Some(&current[at + sep.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The raw value of the first `name` parameter of `query`; `a` in `a&b=1` is empty.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The tokens every DataWeave-subset reader here shares (this module's expressions, JWT claim
/// checks): a position in the text, spaces skipped before each token.
pub(super) struct Cursor<'s> {
    pub src: &'s str,
    pub pos: usize,
}

impl<'s> Cursor<'s> {
    pub fn new(src: &'s str) -> Self {
        Cursor { src, pos: 0 }
    }

    pub fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    pub fn at_end(&mut self) -> bool {
        self.skip_spaces();
        self.pos == self.src.len()
    }

    pub fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    pub fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// The longest run of characters satisfying `is_part`.
    pub fn take_while(&mut self, is_part: impl Fn(char) -> bool) -> &'s str {
        let rest = self.rest();
        let len = rest.find(|c| !is_part(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    /// `'text'` or `"text"`, without escapes.
    pub fn string(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let rest = self.rest();
        let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            return Err("expected a quoted string".into());
        };
        let Some(end) = rest[1..].find(quote) else {
            return Err("unterminated string".into());
        };
        self.pos += end + 2;
        Ok(rest[1..1 + end].to_owned())
    }
}

/// A small recursive-descent reader of the supported forms.
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

impl Parser<'_> {
    fn term(&mut self) -> Result<Term, String> {
        self.skip_spaces();
        if self.rest().starts_with(['\'', '"']) {
            return self.string().map(Term::Literal);
        }
        if self.eat("(") {
            let attr = self.attr()?;
            if !self.eat("splitBy") {
                return Err("expected `splitBy` after `(` and an attribute".into());
            }
            let sep = self.string()?;
            if sep.is_empty() {
                return Err("splitBy needs a non-empty separator".into());
            }
            if !self.eat(")") || !self.eat("[") {
                return Err("expected `)[index]` after splitBy".into());
            }
            let index = self.integer()?;
            if !self.eat("]") {
                return Err("expected `]` after the index".into());
            }
            return Ok(Term::Split { attr, sep, index });
        }
        self.attr().map(Term::Attr)
    }

    fn attr(&mut self) -> Result<Attr, String> {
        if !self.eat("attributes.") {
            return Err(format!(
                "`{}` is not a supported attribute",
                self.rest().trim()
            ));
        }
        let name = self.identifier();
        match name {
            "headers" => Ok(Attr::Header(self.key()?.to_ascii_lowercase())),
            "queryParams" => Ok(Attr::QueryParam(self.key()?)),
            "method" => Ok(Attr::Method),
            "requestPath" => Ok(Attr::RequestPath),
            "queryString" => Ok(Attr::QueryString),
            "remoteAddress" => Ok(Attr::RemoteAddress),
            "statusCode" => Ok(Attr::StatusCode),
            "clientCertificate" => {
                if self.eat(".subjectDN") {
                    Ok(Attr::ClientSubject)
                } else {
                    Err("of `attributes.clientCertificate`, only `.subjectDN` is supported".into())
                }
            }
            other => Err(format!("`attributes.{other}` is not a supported attribute")),
        }
    }

    /// `['name']`, `["name"]` or `.name`.
    fn key(&mut self) -> Result<String, String> {
        if self.rest().starts_with('.') {
            self.pos += 1;
            let name = self.identifier();
            if name.is_empty() {
                return Err("expected a name after `.`".into());
            }
            return Ok(name.to_owned());
        }
        if !self.eat("[") {
            return Err("expected `['name']` after the attribute".into());
        }
        let key = self.string()?;
        if !self.eat("]") {
            return Err("expected `]` after the name".into());
        }
        Ok(key)
    }

    fn identifier(&mut self) -> &str {
        self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    fn integer(&mut self) -> Result<isize, String> {
        self.skip_spaces();
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
            .map_or(rest.len(), |(i, _)| i);
        let n = rest[..len]
            .parse()
            .map_err(|_| "expected an integer index".to_owned())?;
        self.pos += len;
        Ok(n)
    }
}

/// A boolean expression (`conditional` of `message-logging-flex`): `true`, `false`, or two
/// expressions compared with `==` or `!=` (`#[attributes.method == 'POST']`). Values compare
/// as text, so `attributes.statusCode == '500'` and `== 500` alike hold for a 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Always(bool),
    Compare {
        left: Expr,
        right: Expr,
        equal: bool,
    },
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, String> {
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("#[")
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(trimmed)
            .trim();
        match body {
            "true" => return Ok(Condition::Always(true)),
            "false" => return Ok(Condition::Always(false)),
            _ => {}
        }
        let Some((at, op)) = comparison(body) else {
            return Err(format!(
                "unsupported condition `{text}`: expected `true`, `false`, or two expressions \
                 compared with == or !=; {SUPPORTED}"
            ));
        };
        let side = |s: &str| {
            let s = s.trim();
            // A bare number compares as its text.
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(Expr {
                    terms: vec![Term::Literal(s.to_owned())],
                });
            }
            Expr::parse(&format!("#[{s}]"))
                .map_err(|e| e.replace(&format!("`#[{s}]`"), &format!("`{text}`")))
        };
        Ok(Condition::Compare {
            left: side(&body[..at])?,
            right: side(&body[at + op.len()..])?,
            equal: op == "==",
        })
    }

    pub fn reads_response(&self) -> bool {
        match self {
            Condition::Always(_) => false,
            Condition::Compare { left, right, .. } => {
                left.reads_response() || right.reads_response()
            }
        }
    }

    /// Whether the condition holds; an absent attribute makes a comparison false.
    pub fn holds(&self, attrs: &impl Attributes) -> bool {
        match self {
            Condition::Always(b) => *b,
            Condition::Compare { left, right, equal } => {
                let (Some(l), Some(r)) = (left.eval(attrs), right.eval(attrs)) else {
                    return false;
                };
                l.same_text(&r) == *equal
            }
        }
    }
}

/// Where the top-level `==` or `!=` is (outside quotes), and which.
fn comparison(body: &str) -> Option<(usize, &'static str)> {
    let mut quote = None;
    let bytes = body.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            // Bytes, not `&body[i..]`: `i` may fall inside a multi-byte character.
            None if bytes[i..].starts_with(b"==") => return Some((i, "==")),
            None if bytes[i..].starts_with(b"!=") => return Some((i, "!=")),
            None => {}
        }
    }
    None
}

/// Feeds what an expression writes into a hasher, so a key is hashed without being built.
pub struct HashWriter<'h, H: std::hash::Hasher>(pub &'h mut H);

impl<H: std::hash::Hasher> fmt::Write for HashWriter<'_, H> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Attributes for Fake {
        fn header(&self, name: &str) -> Option<&str> {
            match name {
                "x-client-id" => Some("abc"),
                "x-forwarded-for" => Some("203.0.113.9, 10.0.0.1 , 10.0.0.2"),
                _ => None,
            }
        }
        fn header_lines<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8])) {
            if name == "x-forwarded-for" {
                each(b"203.0.113.9, 10.0.0.1 , 10.0.0.2");
                each(b"198.51.100.4");
            } else if name == "x-bin" {
                each(b"10.0.0.1, \xff\xfe");
            } else if let Some(v) = self.header(name) {
                each(v.as_bytes());
            }
        }
        fn method(&self) -> Option<&str> {
            Some("GET")
        }
        fn request_path(&self) -> Option<&str> {
            Some("/api/orders")
        }
        fn query(&self) -> Option<&str> {
            Some("a=1&key=k%20v&flag")
        }
        fn remote_ip(&self) -> Option<IpAddr> {
            Some([192, 0, 2, 1].into())
        }
        fn client_subject(&self) -> Option<&str> {
            Some("CN=client-7, O=Example")
        }
    }

    fn eval(text: &str) -> Option<String> {
        let e = Expr::parse(text).expect(text);
        e.eval(&Fake).map(|v| v.to_string())
    }

    #[test]
    fn the_client_certificate_subject_is_an_attribute() {
        assert_eq!(
            eval("#[attributes.clientCertificate.subjectDN]").as_deref(),
            Some("CN=client-7, O=Example")
        );
        let joined = Expr::parse("#['cert:' ++ attributes.clientCertificate.subjectDN]");
        let mut out = String::new();
        assert!(joined.expect("parses").write(&Fake, &mut out));
        assert_eq!(out, "cert:CN=client-7, O=Example");
        let e = Expr::parse("#[attributes.clientCertificate.subjectDN]").expect("parses");
        assert_eq!(e.eval(&NoTls).map(|v| v.to_string()), None);
        let e = Expr::parse("#[attributes.clientCertificate.issuerDN]").expect_err("unsupported");
        assert!(e.contains("only `.subjectDN` is supported"), "{e}");
    }

    /// A plain connection: no certificate.
    struct NoTls;

    impl Attributes for NoTls {
        fn header(&self, _: &str) -> Option<&str> {
            None
        }
    }

    #[test]
    fn the_common_forms_evaluate() {
        assert_eq!(
            eval("#[attributes.headers['X-Client-Id']]").as_deref(),
            Some("abc")
        );
        assert_eq!(
            eval("#[attributes.headers[\"x-client-id\"]]").as_deref(),
            Some("abc")
        );
        assert_eq!(
            eval("#[ attributes.headers.x-client-id ]").as_deref(),
            Some("abc")
        );
        assert_eq!(eval("#[attributes.method]").as_deref(), Some("GET"));
        assert_eq!(
            eval("#[attributes.requestPath]").as_deref(),
            Some("/api/orders")
        );
        assert_eq!(
            eval("#[attributes.queryParams['key']]").as_deref(),
            Some("k%20v")
        );
        assert_eq!(
            eval("#[attributes.queryParams['flag']]").as_deref(),
            Some("")
        );
        assert_eq!(eval("#[attributes.queryParams['none']]"), None);
        assert_eq!(
            eval("#[attributes.remoteAddress]").as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(eval("#[attributes.headers['missing']]"), None);
        assert_eq!(eval("plain text").as_deref(), Some("plain text"));
        assert_eq!(eval("#[attributes.statusCode]"), None);
    }

    #[test]
    fn split_takes_one_hop() {
        let first = "#[(attributes.headers['x-forwarded-for'] splitBy ',')[0]]";
        let last = "#[(attributes.headers['x-forwarded-for'] splitBy \",\")[-1]]";
        assert_eq!(eval(first).as_deref(), Some("203.0.113.9"));
        // The lines of a header are one list: the last hop is on the last line.
        assert_eq!(eval(last).as_deref(), Some("198.51.100.4"));
        assert_eq!(eval(&last.replace("-1", "-2")).as_deref(), Some("10.0.0.2"));
        assert_eq!(eval(&last.replace("-1", "5")), None);
        assert_eq!(eval(&last.replace("-1", "-5")), None);
        // An item that is not text is absent, not an error.
        let binary = "#[(attributes.headers['x-bin'] splitBy ',')[-1]]";
        assert_eq!(eval(binary), None);
        assert_eq!(
            eval(&binary.replace("-1", "0")).as_deref(),
            Some("10.0.0.1")
        );
        let e = Expr::parse(binary).unwrap();
        assert_eq!(e.header_name(), Some("x-bin"));
        assert_eq!(
            Expr::parse("#[attributes.method]").unwrap().header_name(),
            None
        );
        let e = Expr::parse(first).unwrap();
        assert_eq!(
            e.eval(&Fake).and_then(|v| v.ip()),
            Some([203, 0, 113, 9].into())
        );
    }

    #[test]
    fn terms_join() {
        let e = Expr::parse("#['key-' ++ attributes.method ++ \":\" ++ attributes.remoteAddress]")
            .unwrap();
        assert!(!e.is_single());
        let mut out = String::new();
        assert!(e.write(&Fake, &mut out));
        assert_eq!(out, "key-GET:192.0.2.1");
        let partial = Expr::parse("#[attributes.method ++ attributes.headers['nope']]").unwrap();
        out.clear();
        assert!(!partial.write(&Fake, &mut out));
        assert_eq!(out, "GET");
    }

    #[test]
    fn other_dataweave_is_refused_with_the_supported_list() {
        for bad in [
            "#[payload.id]",
            "#[attributes.source.ip]",
            "#[attributes.headers]",
            "#[attributes.headers['x']",
            "#[attributes.method default 'x']",
            "#[(attributes.headers['x'] splitBy '')[0]]",
            "#[(attributes.headers['x'] splitBy ',')]",
            "#['unterminated]",
        ] {
            let e = Expr::parse(bad).expect_err(bad);
            assert!(
                e.starts_with(&format!("unsupported expression `{bad}`")),
                "{e}"
            );
            assert!(e.contains("supported: attributes.headers['name']"), "{e}");
        }
    }

    #[test]
    fn conditions_compare_as_text() {
        let holds = |text: &str| Condition::parse(text).expect(text).holds(&Fake);
        assert!(holds("#[attributes.method == 'GET']"));
        assert!(!holds("#[attributes.method != \"GET\"]"));
        assert!(holds("#[attributes.headers['x-client-id'] == 'abc']"));
        assert!(!holds("#[attributes.headers['nope'] == 'abc']"));
        assert!(holds("#[attributes.remoteAddress == '192.0.2.1']"));
        assert!(holds("#[attributes.queryParams['a'] == 1]"));
        assert!(holds("true") && !holds("#[false]"));
        assert!(holds("#[attributes.headers['x-forwarded-for'] != 'a==b']"));
        // A character of several bytes before the operator is no panic, just an error.
        assert!(Condition::parse("#[\u{2018}POST\u{2019} == attributes.method]").is_err());
        assert!(Condition::parse("#[attributes.method\u{a0}== 'GET']").is_ok());
        assert!(Value::Status(500).same_text(&Value::Str("500")));
        assert!(!Value::Status(500).same_text(&Value::Str("0500")));
        assert!(Value::Ip([10, 0, 0, 1].into()).same_text(&Value::Str("10.0.0.1")));
        let bad = Condition::parse("#[attributes.method]").unwrap_err();
        assert!(
            bad.starts_with("unsupported condition `#[attributes.method]`"),
            "{bad}"
        );
        let bad = Condition::parse("#[payload == 'x']").unwrap_err();
        assert!(
            bad.contains("`payload` is not a supported attribute"),
            "{bad}"
        );
    }

    #[test]
    fn ips_parse_from_text() {
        assert_eq!(Value::Str(" 10.0.0.1 ").ip(), Some([10, 0, 0, 1].into()));
        assert_eq!(Value::Str("[::1]").ip(), Some("::1".parse().unwrap()));
        assert_eq!(Value::Str("nope").ip(), None);
        assert_eq!(Value::Status(200).ip(), None);
    }

    #[test]
    fn response_attributes_are_known() {
        assert!(Expr::parse("#[attributes.statusCode]")
            .unwrap()
            .reads_response());
        assert!(!Expr::parse("#[attributes.method]")
            .unwrap()
            .reads_response());
    }
}
