//! `cors-flex`: Cross-Origin Resource Sharing, decided by the gateway. It always runs first
//! (the loader puts it there), so a preflight is answered before an authentication policy
//! could refuse it.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by
//!   the gateway with 200 and never reaches the upstream. When the origin is allowed, and (for
//!   a group) the method and every requested header too, the answer grants them:
//!   `Access-Control-Allow-Origin`, `-Methods` (the requested one), `-Headers` (the requested
//!   ones), `-Max-Age` (the group's `accessControlMaxAge`) and, with `supportCredentials`,
//!   `-Allow-Credentials: true`. Otherwise it carries no CORS headers and the browser blocks
//!   the request it was asking about.
//! - Any other request with an `Origin` goes on; when the origin is allowed, its response
//!   (forwarded, or a later policy's refusal) gets `Access-Control-Allow-Origin`, the
//!   credentials flag and the group's `exposedHeaders`. A request from an origin that is not
//!   allowed goes on without them, so the browser keeps the response from the page.
//! - The upstream's own `Access-Control-*` response headers are dropped on every request the
//!   policy applies to, so the client sees one set, the gateway's.
//!
//! `publicResource: true` (Flex's default) allows every origin and does not consult
//! `originGroups`: the allowed origin is `*`, or the request's own origin with
//! `supportCredentials` (a browser refuses `*` with credentials). Otherwise an origin is
//! allowed by the first group listing it (compared case-insensitively; `*` in `origins`
//! stands for any origin). Whenever the answer depends on the origin, every response the
//! policy applies to carries `Vary: Origin`, so a shared cache keeps them apart.
//!
//! Everything is matched against what the request carries, borrowed; nothing is allocated.

use std::sync::Arc;

use ringwall_config::{Node, Scope};

use super::optional_bool;
use super::{
    config_fields, each_item, header_name, optional_list, HeaderLines, Policy, RequestCx, Verdict,
};

/// Flex's default `allowedMethods`: every one of these allowed.
const DEFAULT_METHODS: [&str; 8] = [
    "CONNECT", "DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Flex's default `accessControlMaxAge`, in seconds.
const DEFAULT_MAX_AGE: u32 = 30;

struct Cors {
    public: bool,
    credentials: bool,
    groups: Vec<Group>,
}

struct Group {
    /// Lower-cased; `*` matches any origin.
    origins: Vec<String>,
    /// The methods allowed.
    methods: Vec<String>,
    /// Lower-cased.
    headers: Vec<String>,
    /// `exposedHeaders` joined with `, `; `None` when there are none.
    exposed: Option<String>,
    max_age: u32,
}

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(
        spec,
        scope,
        &["originGroups", "publicResource", "supportCredentials"],
    )?;
    let public = optional_bool(&fields, "publicResource", true, scope);
    let credentials = optional_bool(&fields, "supportCredentials", false, scope);
    let groups = match fields.get("originGroups") {
        None => Some(Vec::new()),
        Some(node) => {
            let path = fields.path_of("originGroups");
            each_item(node, &path, scope, group)
        }
    };
    Some(Arc::new(Cors {
        public: public?,
        credentials: credentials?,
        groups: groups?,
    }))
}

/// One `{name?, origins, accessControlMaxAge, allowedMethods, headers, exposedHeaders}`.
fn group(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Group> {
    let fields = scope.map(
        node,
        path,
        &[
            "name",
            "origins",
            "accessControlMaxAge",
            "allowedMethods",
            "headers",
            "exposedHeaders",
        ],
    )?;
    let name = match fields.get("name") {
        None => Some(()),
        Some(n) => scope.str(n, &fields.path_of("name")).map(|_| ()),
    };
    let origins = optional_list(&fields, "origins", scope, |node, path, scope| {
        let text = scope.str(node, path)?;
        if !is_origin(text) {
            let message = format!(
                "`{text}` is not an origin: expected `scheme://host[:port]`, without a path, \
                 or `*`"
            );
            scope.error(node.line, path, message);
            return None;
        }
        Some(text.to_ascii_lowercase())
    });
    let max_age = match fields.get("accessControlMaxAge") {
        None => Some(DEFAULT_MAX_AGE),
        Some(n) => scope
            .int_in(
                n,
                &fields.path_of("accessControlMaxAge"),
                0..=i64::from(u32::MAX),
            )
            .and_then(|age| u32::try_from(age).ok()),
    };
    let methods = match fields.get("allowedMethods") {
        None => Some(DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect()),
        Some(_) => optional_list(&fields, "allowedMethods", scope, allowed_method)
            .map(|all| all.into_iter().flatten().collect()),
    };
    let headers = optional_list(&fields, "headers", scope, |node, path, scope| {
        header_name(node, path, scope).map(str::to_ascii_lowercase)
    });
    let exposed = optional_list(&fields, "exposedHeaders", scope, |node, path, scope| {
        header_name(node, path, scope).map(str::to_owned)
    });
    name?;
    let exposed = exposed?;
    Some(Group {
        origins: origins?,
        methods: methods?,
        headers: headers?,
        exposed: (!exposed.is_empty()).then(|| exposed.join(", ")),
        max_age: max_age?,
    })
}

/// `{methodName, allowed}`: the method when allowed. Flex's reference spells the flag
/// `isAllowed`, its policy definition `allowed`; either is accepted.
fn allowed_method(node: &Node, path: &str, scope: &mut Scope<'_>) -> Option<Option<String>> {
    let fields = scope.map(node, path, &["methodName", "allowed", "isAllowed"])?;
    let name = scope.require(&fields, "methodName").and_then(|n| {
        let name_path = fields.path_of("methodName");
        let name = scope.str(n, &name_path)?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            scope.error(n.line, &name_path, format!("`{name}` is not a method name"));
            return None;
        }
        Some(name.to_owned())
    });
    let allowed = match (fields.get("allowed"), fields.get("isAllowed")) {
        (Some(n), None) => scope.bool(n, &fields.path_of("allowed")),
        (None, Some(n)) => scope.bool(n, &fields.path_of("isAllowed")),
        (None, None) => {
            let message = "missing required field `allowed` (or `isAllowed`)";
            scope.error(fields.line, &fields.path_of("allowed"), message);
            None
        }
        (Some(_), Some(n)) => {
            let message = "`allowed` and `isAllowed` are the same flag: give one";
            scope.error(n.line, &fields.path_of("isAllowed"), message);
            None
        }
    };
    let (name, allowed) = (name?, allowed?);
    Some(allowed.then_some(name))
}

/// `*`, `null`, or `scheme://authority` with nothing after the authority.
fn is_origin(text: &str) -> bool {
    if text == "*" || text == "null" {
        return true;
    }
    let Some((scheme, authority)) = text.split_once("://") else {
        return false;
    };
    let scheme_char = |b: u8| b.is_ascii_alphanumeric() || b"+-.".contains(&b);
    !scheme.is_empty()
        && scheme.bytes().all(scheme_char)
        && !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/?#".contains(&b))
}

// === Deciding ===

impl Group {
    /// `*` stands for any origin but `null` (a sandboxed frame, a `file:` page, a redirect),
    /// which is granted only when listed by name.
    fn lists(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| {
            (o == "*" && !origin.eq_ignore_ascii_case("null")) || o.eq_ignore_ascii_case(origin)
        })
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// Whether every header of an `Access-Control-Request-Headers` list is allowed.
    fn allows_headers(&self, requested: &str) -> bool {
        requested
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| self.headers.iter().any(|a| a.eq_ignore_ascii_case(h)))
    }
}

impl Cors {
    fn group(&self, origin: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.lists(origin))
    }

    /// Whether the allowed origin is the request's own rather than `*`.
    fn echoes_origin(&self) -> bool {
        !self.public || self.credentials
    }

    fn allow_origin(&self, origin: &str, out: &mut HeaderLines) {
        // Credentials are never granted to `null`: any page can send it.
        if self.public && self.credentials && origin.eq_ignore_ascii_case("null") {
            return;
        }
        if self.echoes_origin() {
            out.add("Access-Control-Allow-Origin", origin.as_bytes());
        } else {
            out.add("Access-Control-Allow-Origin", b"*");
        }
        if self.credentials {
            out.add("Access-Control-Allow-Credentials", b"true");
        }
    }

    /// Writes the grant for a preflight, or nothing when it is not granted.
    fn preflight(&self, origin: &str, method: &str, requested: &str, out: &mut HeaderLines) {
        if method.is_empty() {
            return;
        }
        let max_age = if self.public {
            None
        } else {
            match self.group(origin) {
                Some(g) if g.allows_method(method) && g.allows_headers(requested) => {
                    Some(g.max_age)
                }
                _ => return,
            }
        };
        self.allow_origin(origin, out);
        out.add("Access-Control-Allow-Methods", method.as_bytes());
        if !requested.is_empty() {
            out.add("Access-Control-Allow-Headers", requested.as_bytes());
        }
        if let Some(age) = max_age {
            out.add_display("Access-Control-Max-Age", age);
        }
    }
}

impl Policy for Cors {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let req = cx.req;
        let out = &mut *cx.client_headers;
        if self.echoes_origin() {
            out.add("Vary", b"Origin");
        }
        let Some(origin) = req.header("origin").map(str::trim) else {
            return Verdict::Continue;
        };
        let asked = req.header("access-control-request-method").map(str::trim);
        if let (Some(method), "OPTIONS") = (asked, req.method) {
            let requested = req
                .header("access-control-request-headers")
                .map_or("", str::trim);
            self.preflight(origin, method, requested, out);
            return Verdict::Answer(200);
        }
        if self.public {
            self.allow_origin(origin, out);
        } else if let Some(group) = self.group(origin) {
            self.allow_origin(origin, out);
            if let Some(exposed) = &group.exposed {
                out.add("Access-Control-Expose-Headers", exposed.as_bytes());
            }
        }
        Verdict::Continue
    }

    fn strips_response_header(&self, name: &str) -> bool {
        name.get(..15)
            .is_some_and(|p| p.eq_ignore_ascii_case("access-control-"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{compiled, error_of, run, with_policy};
    use super::super::Policies;

    const SITE: &str = "https://app.example.com";

    fn request(method: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = format!("{method} /orders HTTP/1.1\r\nHost: a\r\n").into_bytes();
        for (name, value) in headers {
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    /// What the gateway does with one request: `Some(status)` when it answers itself, and
    /// the headers the client gets.
    fn decide(
        policies: &Policies,
        snapshot: &ringwall_config::Snapshot,
        method: &str,
        headers: &[(&str, &str)],
    ) -> (Option<u16>, String) {
        let out = run(policies, snapshot, &request(method, headers), "192.0.2.1:1");
        assert_eq!(out.verdict, None, "CORS never refuses");
        (out.answered, out.client)
    }

    const GROUPS: &str = "    publicResource: false\n    originGroups:\n      \
         - origins: ['https://APP.example.com', 'http://localhost:3000']\n        \
           accessControlMaxAge: 600\n        allowedMethods:\n          \
           - {methodName: GET, allowed: true}\n          \
           - {methodName: PUT, isAllowed: true}\n          \
           - {methodName: DELETE, allowed: false}\n        \
           headers: [Content-Type, X-Request-Id]\n        \
           exposedHeaders: [X-Total-Count, ETag]\n      \
         - name: partners\n        origins: ['https://partner.example.org']\n";

    #[test]
    fn a_preflight_from_a_listed_origin_is_granted_by_the_gateway() {
        let (snapshot, policies) = compiled(&with_policy("cors-flex", GROUPS)).expect("valid");
        let preflight = |origin: &str, method: &str, headers: Option<&str>| {
            let mut h = vec![
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
            ];
            if let Some(asked) = headers {
                h.push(("Access-Control-Request-Headers", asked));
            }
            decide(&policies, &snapshot, "OPTIONS", &h)
        };

        assert_eq!(
            preflight(SITE, "PUT", Some("content-type, x-request-id")),
            (
                Some(200),
                format!(
                    "Vary: Origin\r\nAccess-Control-Allow-Origin: {SITE}\r\n\
                     Access-Control-Allow-Methods: PUT\r\n\
                     Access-Control-Allow-Headers: content-type, x-request-id\r\n\
                     Access-Control-Max-Age: 600\r\n"
                )
            )
        );
        // The second group: Flex's defaults (every usual method, 30 s, no extra headers).
        assert_eq!(
            preflight("https://partner.example.org", "PATCH", None),
            (
                Some(200),
                "Vary: Origin\r\nAccess-Control-Allow-Origin: https://partner.example.org\r\n\
                 Access-Control-Allow-Methods: PATCH\r\nAccess-Control-Max-Age: 30\r\n"
                    .to_owned()
            )
        );

        // Answered, but without a grant: the browser stops there.
        let refused = (Some(200), "Vary: Origin\r\n".to_owned());
        assert_eq!(preflight("https://evil.example.net", "GET", None), refused);
        assert_eq!(preflight(SITE, "DELETE", None), refused, "allowed: false");
        assert_eq!(preflight(SITE, "POST", None), refused, "not listed");
        assert_eq!(preflight(SITE, "GET", Some("x-other")), refused);
        assert_eq!(
            preflight("https://partner.example.org", "GET", Some("content-type")),
            refused,
            "headers are per group"
        );
    }

    #[test]
    fn an_actual_request_from_a_listed_origin_gets_its_grant() {
        let (snapshot, policies) = compiled(&with_policy("cors-flex", GROUPS)).expect("valid");
        assert_eq!(
            decide(&policies, &snapshot, "GET", &[("Origin", SITE)]),
            (
                None,
                format!(
                    "Vary: Origin\r\nAccess-Control-Allow-Origin: {SITE}\r\n\
                     Access-Control-Expose-Headers: X-Total-Count, ETag\r\n"
                )
            )
        );
        // An OPTIONS without Access-Control-Request-Method is an actual request.
        assert_eq!(
            decide(&policies, &snapshot, "OPTIONS", &[("Origin", SITE)]).0,
            None
        );
        // Not listed: it goes on without a grant.
        assert_eq!(
            decide(
                &policies,
                &snapshot,
                "GET",
                &[("Origin", "https://evil.example.net")]
            ),
            (None, "Vary: Origin\r\n".to_owned())
        );
        // No Origin: not a CORS request; only the cache hint.
        assert_eq!(
            decide(&policies, &snapshot, "GET", &[]),
            (None, "Vary: Origin\r\n".to_owned())
        );
        let out = run(&policies, &snapshot, &request("GET", &[]), "192.0.2.1:1");
        let chain = &policies.chains[0];
        assert!(chain.strips_response_header(out.applied, "Access-Control-Allow-Origin"));
        assert!(chain.strips_response_header(out.applied, "access-control-max-age"));
        assert!(!chain.strips_response_header(out.applied, "Vary"));
        assert!(!chain.strips_response_header(out.applied, "access-contro"));
    }

    #[test]
    fn a_public_resource_allows_every_origin() {
        let (snapshot, policies) =
            compiled(&with_policy("cors-flex", "    originGroups: []\n")).expect("valid");
        assert_eq!(
            decide(&policies, &snapshot, "GET", &[("Origin", SITE)]),
            (None, "Access-Control-Allow-Origin: *\r\n".to_owned())
        );
        assert_eq!(
            decide(
                &policies,
                &snapshot,
                "OPTIONS",
                &[
                    ("Origin", SITE),
                    ("Access-Control-Request-Method", "DELETE"),
                    ("Access-Control-Request-Headers", "x-anything"),
                ]
            ),
            (
                Some(200),
                "Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Methods: DELETE\r\n\
                 Access-Control-Allow-Headers: x-anything\r\n"
                    .to_owned()
            )
        );
        // Nothing at all for a request that is not cross-origin.
        assert_eq!(
            decide(&policies, &snapshot, "GET", &[]),
            (None, String::new())
        );
    }

    #[test]
    fn credentials_are_never_granted_to_a_wildcard() {
        let public = with_policy("cors-flex", "    supportCredentials: true\n");
        let (snapshot, policies) = compiled(&public).expect("valid");
        assert_eq!(
            decide(&policies, &snapshot, "GET", &[("Origin", SITE)]).1,
            format!(
                "Vary: Origin\r\nAccess-Control-Allow-Origin: {SITE}\r\n\
                 Access-Control-Allow-Credentials: true\r\n"
            )
        );
        let any = with_policy(
            "cors-flex",
            "    publicResource: false\n    supportCredentials: true\n    originGroups:\n      \
             - origins: ['*']\n",
        );
        let (snapshot, policies) = compiled(&any).expect("valid");
        let (answered, headers) = decide(
            &policies,
            &snapshot,
            "OPTIONS",
            &[("Origin", SITE), ("Access-Control-Request-Method", "GET")],
        );
        assert_eq!(answered, Some(200));
        assert_eq!(
            headers,
            format!(
                "Vary: Origin\r\nAccess-Control-Allow-Origin: {SITE}\r\n\
                 Access-Control-Allow-Credentials: true\r\nAccess-Control-Allow-Methods: GET\r\n\
                 Access-Control-Max-Age: 30\r\n"
            )
        );
        // `null` (any sandboxed page can send it) is not "any origin".
        let (answered, headers) = decide(
            &policies,
            &snapshot,
            "OPTIONS",
            &[("Origin", "null"), ("Access-Control-Request-Method", "GET")],
        );
        assert_eq!(answered, Some(200));
        assert_eq!(headers, "Vary: Origin\r\n");
        let public = with_policy("cors-flex", "    supportCredentials: true\n");
        let (snapshot, policies) = compiled(&public).expect("valid");
        let (_, headers) = decide(&policies, &snapshot, "GET", &[("Origin", "null")]);
        assert!(!headers.contains("Access-Control-Allow"), "{headers}");
    }

    #[test]
    fn cors_runs_before_authentication_whatever_its_order() {
        let yaml = format!(
            "{}  order: 1\n---\n{}kind: PolicyBinding\nmetadata: {{name: cors}}\nspec:\n  \
             targetRef: {{name: a}}\n  policyRef: {{name: cors-flex}}\n  order: 99\n  config:\n{GROUPS}",
            with_policy(
                "http-basic-authentication-flex",
                "    username: u\n    password: p\n"
            ),
            super::super::tests::HEADER,
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        let preflight = run(
            &policies,
            &snapshot,
            &request(
                "OPTIONS",
                &[("Origin", SITE), ("Access-Control-Request-Method", "GET")],
            ),
            "192.0.2.1:1",
        );
        assert_eq!((preflight.answered, preflight.verdict), (Some(200), None));
        // The refusal carries the grant, so the page can read the 401.
        let refused = run(
            &policies,
            &snapshot,
            &request("GET", &[("Origin", SITE)]),
            "192.0.2.1:1",
        );
        assert_eq!(refused.verdict, Some((401, "missing credentials")));
        assert!(
            refused
                .client
                .contains(&format!("Access-Control-Allow-Origin: {SITE}\r\n")),
            "{}",
            refused.client
        );
    }

    #[test]
    fn the_config_is_checked() {
        let policy = |config: &str| error_of(&with_policy("cors-flex", config));
        assert_eq!(
            policy("    originGroups:\n      - origins: ['https://a.example.com/']\n"),
            "17: spec.config.originGroups[0].origins[0]: `https://a.example.com/` is not an \
             origin: expected `scheme://host[:port]`, without a path, or `*`"
        );
        assert!(
            policy("    originGroups:\n      - origins: [a.example.com]\n")
                .contains("`a.example.com` is not an origin")
        );
        assert_eq!(
            policy("    originGroups:\n      - allowedMethods:\n          - {methodName: GET}\n"),
            "18: spec.config.originGroups[0].allowedMethods[0].allowed: missing required field \
             `allowed` (or `isAllowed`)"
        );
        assert_eq!(
            policy(
                "    originGroups:\n      - allowedMethods:\n          \
                 - {methodName: GET, allowed: true, isAllowed: true}\n"
            ),
            "18: spec.config.originGroups[0].allowedMethods[0].isAllowed: `allowed` and \
             `isAllowed` are the same flag: give one"
        );
        assert_eq!(
            policy(
                "    originGroups:\n      - allowedMethods:\n          \
                 - {methodName: 'GE T', allowed: true}\n"
            ),
            "18: spec.config.originGroups[0].allowedMethods[0].methodName: `GE T` is not a \
             method name"
        );
        assert_eq!(
            policy("    originGroups:\n      - accessControlMaxAge: -1\n"),
            "17: spec.config.originGroups[0].accessControlMaxAge: must be between 0 and \
             4294967295, found -1"
        );
        assert_eq!(
            policy("    originGroups:\n      - headers: ['x y']\n"),
            "17: spec.config.originGroups[0].headers[0]: `x y` is not a valid header name"
        );
        assert_eq!(
            policy("    publicResource: 'no'\n"),
            "16: spec.config.publicResource: expected a boolean, found a string"
        );
        assert!(policy("    originGroups:\n      - origin: ['*']\n")
            .starts_with("17: spec.config.originGroups[0].origin: unknown field `origin`"));
        assert!(policy("    allowCredentials: true\n")
            .starts_with("16: spec.config.allowCredentials: unknown field `allowCredentials`"));
    }
}
