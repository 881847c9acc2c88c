//! `client-id-enforcement`: API keys. Only requests carrying the id (and, where one is set,
//! the secret) of a known client pass; the others get a 401.
//!
//! The credentials come from where Flex's `credentialsOriginHasHttpBasicAuthenticationHeader`
//! says: `customExpression` (the default) reads the id with `clientIdExpression` (default
//! `#[attributes.headers['client_id']]`) and the secret with `clientSecretExpression` (no
//! default: without it no secret is read); `httpBasicAuthenticationHeader` reads both from
//! `Authorization: Basic base64(id:secret)`, and its refusals carry a `WWW-Authenticate`
//! challenge.
//!
//! In Flex the clients are the applications with a contract in API Manager. Local Mode has no
//! API Manager, so Ringwall lists them in the config: `clients: [{clientId, clientSecret?,
//! name?}]`, and/or `clientsFile`, a YAML or JSON file holding such a list (a relative path is
//! taken from the directory of the file that binds the policy). A client without a secret is
//! let in on its id alone. The file is read at load and at every reload; editing it takes
//! effect on the next reload (SIGHUP, or any change to a YAML file of the configuration
//! directory), never half-read.
//!
//! Ids are looked up in a hash map by `&str`, allocation-free; ids are identifiers, so the
//! lookup's timing is not hidden. Secrets are kept as SHA-256 digests and compared as
//! digests in constant time, as in `basic_auth`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hashbrown::HashMap;
use ringwall_config::{item, Node, Scope};
use subtle::ConstantTimeEq;

use super::basic_auth::{basic_credentials, digest, CHALLENGE, MAX_CREDENTIALS};
use super::expr::{Expr, Value};
use super::{config_fields, expression, Policy, RequestCx, Verdict};

const DEFAULT_ID: &str = "#[attributes.headers['client_id']]";

const MISSING: &str = "missing client credentials";
const INVALID: &str = "invalid client credentials";

enum Source {
    /// `customExpression`.
    Expressions { id: Expr, secret: Option<Expr> },
    /// `httpBasicAuthenticationHeader`.
    Basic,
}

struct ClientId {
    source: Source,
    /// Client id → the digest of its secret, if it has one.
    clients: HashMap<Box<str>, Option<[u8; 32]>>,
    /// Whether the clients came (partly) from `clientsFile`.
    reads_file: bool,
}

pub(super) fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(
        spec,
        scope,
        &[
            "credentialsOriginHasHttpBasicAuthenticationHeader",
            "clientIdExpression",
            "clientSecretExpression",
            "clients",
            "clientsFile",
        ],
    )?;
    let basic = match fields.get("credentialsOriginHasHttpBasicAuthenticationHeader") {
        None => Some(false),
        Some(node) => {
            let path = fields.path_of("credentialsOriginHasHttpBasicAuthenticationHeader");
            match scope.str(node, &path)? {
                "customExpression" => Some(false),
                "httpBasicAuthenticationHeader" => Some(true),
                other => {
                    let message = format!(
                        "expected `customExpression` or `httpBasicAuthenticationHeader`, found \
                         `{other}`"
                    );
                    scope.error(node.line, &path, message);
                    None
                }
            }
        }
    };
    let mut read = |key: &str| -> Option<Option<Expr>> {
        let Some(node) = fields.get(key) else {
            return Some(None);
        };
        let path = fields.path_of(key);
        let e = expression(node, &path, scope)?;
        if !e.is_single() || e.reads_response() {
            scope.error(node.line, &path, "must name one request attribute");
            return None;
        }
        Some(Some(e))
    };
    // In basic mode the expressions are not used; API Manager sends them anyway, so they are
    // still checked and accepted.
    let id = read("clientIdExpression");
    let secret = read("clientSecretExpression");
    let (basic, id, secret) = (basic?, id?, secret?);
    let source = if basic {
        Source::Basic
    } else {
        let id = id.unwrap_or_else(|| Expr::parse(DEFAULT_ID).expect("the default parses"));
        Source::Expressions { id, secret }
    };
    let secrets_readable = !matches!(source, Source::Expressions { secret: None, .. });

    let mut clients = HashMap::new();
    let mut ok = true;
    let inline = fields.get("clients");
    if let Some(node) = inline {
        let path = fields.path_of("clients");
        match scope.seq(node, &path) {
            Some([]) => {
                scope.error(node.line, &path, "must list at least one client");
                ok = false;
            }
            Some(items) => ok &= add_clients(items, &path, secrets_readable, &mut clients, scope),
            None => ok = false,
        }
    }
    let file = fields.get("clientsFile");
    if let Some(node) = file {
        let path = fields.path_of("clientsFile");
        ok &= read_clients_file(
            node,
            &path,
            &spec.file,
            secrets_readable,
            &mut clients,
            scope,
        );
    }
    if inline.is_none() && file.is_none() {
        let message = "missing required field `clients` (or `clientsFile`)";
        scope.error(fields.line, &fields.path_of("clients"), message);
        return None;
    }
    ok.then(|| {
        Arc::new(ClientId {
            source,
            clients,
            reads_file: file.is_some(),
        }) as Arc<dyn Policy>
    })
}

/// Adds `[{clientId, clientSecret?, name?}]`; `false` when an entry is wrong (reported).
fn add_clients(
    items: &[Node],
    path: &str,
    secrets_readable: bool,
    clients: &mut HashMap<Box<str>, Option<[u8; 32]>>,
    scope: &mut Scope<'_>,
) -> bool {
    let mut ok = true;
    for (i, entry) in items.iter().enumerate() {
        let path = item(path, i);
        let Some(fields) = scope.map(entry, &path, &["clientId", "clientSecret", "name"]) else {
            ok = false;
            continue;
        };
        if let Some(name) = fields.get("name") {
            ok &= scope.str(name, &fields.path_of("name")).is_some();
        }
        let secret = match fields.get("clientSecret") {
            None => Some(None),
            Some(node) => {
                let path = fields.path_of("clientSecret");
                match scope.str(node, &path) {
                    Some("") => {
                        scope.error(node.line, &path, "must not be empty");
                        None
                    }
                    Some(_) if !secrets_readable => {
                        let message = "there is no `clientSecretExpression` to read the secret \
                                       from requests: set one, or leave the secret out";
                        scope.error(node.line, &path, message);
                        None
                    }
                    Some(secret) => Some(Some(digest(secret.as_bytes()))),
                    None => None,
                }
            }
        };
        let id = scope.require(&fields, "clientId").and_then(|node| {
            let path = fields.path_of("clientId");
            let id = scope.str(node, &path)?;
            if id.is_empty() {
                scope.error(node.line, &path, "must not be empty");
                return None;
            }
            if clients.contains_key(id) {
                scope.error(node.line, &path, format!("client `{id}` is listed twice"));
                return None;
            }
            Some(id)
        });
        match (id, secret) {
            (Some(id), Some(secret)) => {
                clients.insert(id.into(), secret);
            }
            _ => ok = false,
        }
    }
    ok
}

/// Reads the list in `clientsFile`. A file that cannot be read is reported at the field;
/// what is wrong inside it, at its own lines.
fn read_clients_file(
    node: &Node,
    path: &str,
    config_file: &str,
    secrets_readable: bool,
    clients: &mut HashMap<Box<str>, Option<[u8; 32]>>,
    scope: &mut Scope<'_>,
) -> bool {
    let Some(name) = scope.str(node, path) else {
        return false;
    };
    if name.is_empty() {
        scope.error(node.line, path, "must not be empty");
        return false;
    }
    let file = resolve(name, config_file);
    let shown = file.display().to_string();
    let text = match std::fs::read(&file).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => {
            scope.error(node.line, path, format!("`{shown}` is not valid UTF-8"));
            return false;
        }
        Err(e) => {
            scope.error(node.line, path, format!("cannot read `{shown}`: {e}"));
            return false;
        }
    };
    let mut inner = Scope::new(&mut *scope.diag, &shown);
    inner.resource = scope.resource.clone();
    let errors_before = inner.diag.errors.len();
    let docs = ringwall_config::parse_documents(&text, &mut inner);
    if inner.diag.errors.len() > errors_before {
        return false;
    }
    match docs.as_slice() {
        // An empty file lists no clients: every request is refused.
        [] => true,
        [list] => {
            let Some(items) = inner.seq(list, path) else {
                return false;
            };
            add_clients(items, path, secrets_readable, clients, &mut inner)
        }
        [_, second, ..] => {
            let message = "holds several YAML documents; expected one list of clients";
            inner.error(second.line, path, message);
            false
        }
    }
}

/// `name` as it is when absolute, else beside the file that binds the policy.
fn resolve(name: &str, config_file: &str) -> PathBuf {
    let name = Path::new(name);
    match Path::new(config_file).parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_path_buf(),
    }
}

impl ClientId {
    /// Whether `id` and `secret` are those of a known client; the reason why not otherwise.
    fn check(&self, id: &[u8], secret: Option<&[u8]>) -> Result<(), &'static str> {
        if id.is_empty() {
            return Err(MISSING);
        }
        let known = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.clients.get(id));
        match (known, secret) {
            (None, _) => Err(INVALID),
            (Some(None), _) => Ok(()),
            (Some(Some(want)), Some(got)) if bool::from(digest(got).ct_eq(want)) => Ok(()),
            (Some(Some(_)), Some(_)) => Err(INVALID),
            (Some(Some(_)), None) => Err(MISSING),
        }
    }
}

/// What `e` reads, as text: an address or a status code is no credential.
fn text<'a>(e: &'a Expr, cx: &'a RequestCx<'_>) -> Option<&'a [u8]> {
    match e.eval(cx)? {
        Value::Str(s) => Some(s.as_bytes()),
        _ => None,
    }
}

impl Policy for ClientId {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let outcome = match &self.source {
            Source::Expressions { id, secret } => {
                let cx = &*cx;
                match text(id, cx) {
                    None => Err(MISSING),
                    Some(id) => self.check(id, secret.as_ref().and_then(|s| text(s, cx))),
                }
            }
            Source::Basic => {
                let mut buf = [0u8; MAX_CREDENTIALS];
                match cx
                    .req
                    .header("authorization")
                    .and_then(|h| basic_credentials(h, &mut buf))
                {
                    None => Err(MISSING),
                    Some((id, secret)) => self.check(id, Some(secret)),
                }
            }
        };
        match outcome {
            Ok(()) => Verdict::Continue,
            Err(reason) => {
                if matches!(self.source, Source::Basic) {
                    cx.client_headers.add("WWW-Authenticate", CHALLENGE);
                }
                Verdict::Reject(401, reason)
            }
        }
    }

    fn reusable(&self) -> bool {
        !self.reads_file
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use base64::Engine;

    use super::super::tests::{compiled, error_of, run, with_policy};
    use super::super::{compile, Policies};
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = b"GET /orders HTTP/1.1\r\nHost: a\r\n".to_vec();
        for (name, value) in headers {
            raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    fn basic(id_secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(id_secret)
        )
    }

    /// The verdict and the client headers for one request.
    fn decide(
        policies: &Policies,
        snapshot: &ringwall_config::Snapshot,
        headers: &[(&str, &str)],
    ) -> (Option<(u16, &'static str)>, String) {
        let out = run(policies, snapshot, &request(headers), "192.0.2.1:1");
        (out.verdict, out.client)
    }

    const MISSING_401: Option<(u16, &str)> = Some((401, "missing client credentials"));
    const INVALID_401: Option<(u16, &str)> = Some((401, "invalid client credentials"));

    #[test]
    fn header_credentials_are_checked_against_the_listed_clients() {
        let yaml = with_policy(
            "client-id-enforcement",
            "    clientSecretExpression: \"#[attributes.headers['client_secret']]\"\n    \
             clients:\n      - {clientId: app-1, clientSecret: s1, name: Orders app}\n      \
             - {clientId: key-only}\n",
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        let check = |headers: &[(&str, &str)]| decide(&policies, &snapshot, headers);

        assert_eq!(
            check(&[("client_id", "app-1"), ("client_secret", "s1")]),
            (None, String::new())
        );
        // A client without a secret passes on its id, whatever secret comes with it.
        assert_eq!(check(&[("client_id", "key-only")]).0, None);
        assert_eq!(
            check(&[("Client_Id", "key-only"), ("client_secret", "x")]).0,
            None
        );

        assert_eq!(check(&[]), (MISSING_401, String::new()));
        assert_eq!(check(&[("client_id", "")]).0, MISSING_401);
        assert_eq!(check(&[("client_id", "app-1")]).0, MISSING_401);
        assert_eq!(
            check(&[("client_id", "app-1"), ("client_secret", "s2")]).0,
            INVALID_401
        );
        assert_eq!(
            check(&[("client_id", "app-1"), ("client_secret", "s1 ")]).0,
            None,
            "header values are trimmed by the parser"
        );
        assert_eq!(
            check(&[("client_id", "APP-1"), ("client_secret", "s1")]).0,
            INVALID_401,
            "ids are case-sensitive"
        );
        assert_eq!(
            check(&[("client_id", "stranger"), ("client_secret", "s1")]),
            (INVALID_401, String::new())
        );
    }

    #[test]
    fn other_expressions_read_other_attributes() {
        let yaml = with_policy(
            "client-id-enforcement",
            "    credentialsOriginHasHttpBasicAuthenticationHeader: customExpression\n    \
             clientIdExpression: \"#[attributes.queryParams['key']]\"\n    \
             clients: [{clientId: k1}]\n",
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        let get = |target: &str| {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\nclient_id: k1\r\n\r\n");
            run(&policies, &snapshot, raw.as_bytes(), "192.0.2.1:1").verdict
        };
        assert_eq!(get("/orders?key=k1"), None);
        assert_eq!(get("/orders"), MISSING_401);
        assert_eq!(get("/orders?key=k2"), INVALID_401);
    }

    #[test]
    fn basic_credentials_are_checked_and_refusals_challenge() {
        let yaml = with_policy(
            "client-id-enforcement",
            "    credentialsOriginHasHttpBasicAuthenticationHeader: httpBasicAuthenticationHeader\n    \
             clientIdExpression: \"#[attributes.headers['client_id']]\"\n    \
             clients:\n      - {clientId: app-1, clientSecret: 's:1'}\n      - {clientId: open}\n",
        );
        let (snapshot, policies) = compiled(&yaml).expect("valid");
        let check = |headers: &[(&str, &str)]| decide(&policies, &snapshot, headers);
        let challenge = "WWW-Authenticate: Basic realm=\"ringwall\", charset=\"UTF-8\"\r\n";

        assert_eq!(
            check(&[("Authorization", &basic("app-1:s:1"))]),
            (None, String::new())
        );
        assert_eq!(check(&[("Authorization", &basic("open:"))]).0, None);
        // Headers are not read in this mode.
        assert_eq!(
            check(&[("client_id", "open")]),
            (MISSING_401, challenge.to_owned())
        );
        assert_eq!(
            check(&[("Authorization", &basic("app-1:s:2"))]),
            (INVALID_401, challenge.to_owned())
        );
        assert_eq!(
            check(&[("Authorization", &basic("nobody:s:1"))]).0,
            INVALID_401
        );
        assert_eq!(check(&[("Authorization", &basic(":s:1"))]).0, MISSING_401);
        assert_eq!(check(&[("Authorization", "Bearer x")]).0, MISSING_401);
    }

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("ringwall-clients-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the test directory");
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write the clients file");
            path.display().to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn clients_may_come_from_a_file_read_again_on_reload() {
        let dir = TempDir::new("reload");
        let file = dir.write(
            "clients.json",
            r#"[{"clientId": "from-file", "clientSecret": "fs"}]"#,
        );
        let yaml = with_policy(
            "client-id-enforcement",
            &format!(
                "    clientSecretExpression: \"#[attributes.headers['client_secret']]\"\n    \
                 clients: [{{clientId: inline}}]\n    clientsFile: {file}\n"
            ),
        );
        let (snapshot, first) = compiled(&yaml).expect("valid");
        let from_file = [("client_id", "from-file"), ("client_secret", "fs")];
        assert_eq!(decide(&first, &snapshot, &from_file).0, None);
        assert_eq!(
            decide(&first, &snapshot, &[("client_id", "inline")]).0,
            None
        );
        let later = [("client_id", "later")];
        assert_eq!(decide(&first, &snapshot, &later).0, INVALID_401);

        // The config is unchanged, but the file is not: a reload reads it again.
        dir.write("clients.json", "- clientId: later\n");
        let again = compile(&snapshot, Some(&first), &Default::default()).expect("valid");
        assert_eq!(decide(&again, &snapshot, &later).0, None);
        assert_eq!(decide(&again, &snapshot, &from_file).0, INVALID_401);

        // An empty file lists nobody.
        dir.write("clients.json", "");
        let empty = compile(&snapshot, Some(&again), &Default::default()).expect("valid");
        assert_eq!(decide(&empty, &snapshot, &later).0, INVALID_401);
        assert_eq!(
            decide(&empty, &snapshot, &[("client_id", "inline")]).0,
            None
        );
    }

    #[test]
    fn a_relative_clients_file_is_found_beside_the_binding() {
        assert_eq!(
            resolve("clients.yaml", "/etc/ringwall/api.yaml"),
            PathBuf::from("/etc/ringwall/clients.yaml")
        );
        assert_eq!(
            resolve("/srv/clients.yaml", "/etc/ringwall/api.yaml"),
            PathBuf::from("/srv/clients.yaml")
        );
        assert_eq!(
            resolve("clients.yaml", "api.yaml"),
            PathBuf::from("clients.yaml")
        );
    }

    #[test]
    fn file_errors_name_the_file_and_its_line() {
        let dir = TempDir::new("errors");
        let file = dir.write(
            "clients.yaml",
            "- clientId: a\n- clientId: 7\n- {clientId: a}\n",
        );
        let yaml = with_policy(
            "client-id-enforcement",
            &format!("    clientsFile: {file}\n"),
        );
        let Err(errors) = compiled(&yaml) else {
            panic!("loaded");
        };
        let shown: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                format!(
                    "{file}:2: PolicyBinding/p: spec.config.clientsFile[1].clientId: expected a \
                     string, found an integer"
                ),
                format!(
                    "{file}:3: PolicyBinding/p: spec.config.clientsFile[2].clientId: client `a` \
                     is listed twice"
                ),
            ]
        );

        let missing = format!("{}/nope.yaml", dir.0.display());
        let yaml = with_policy(
            "client-id-enforcement",
            &format!("    clientsFile: {missing}\n"),
        );
        assert_eq!(
            error_of(&yaml),
            format!(
                "16: spec.config.clientsFile: cannot read `{missing}`: No such file or directory \
                 (os error 2)"
            )
        );

        dir.write("map.yaml", "clients: []\n");
        let yaml = with_policy(
            "client-id-enforcement",
            &format!("    clientsFile: {}/map.yaml\n", dir.0.display()),
        );
        assert_eq!(
            error_of(&yaml),
            "1: spec.config.clientsFile: expected a sequence, found a mapping"
        );

        dir.write("bad.yaml", "- [\n");
        let yaml = with_policy(
            "client-id-enforcement",
            &format!("    clientsFile: {}/bad.yaml\n", dir.0.display()),
        );
        assert!(
            error_of(&yaml).contains("YAML syntax error"),
            "{}",
            error_of(&yaml)
        );
    }

    #[test]
    fn the_config_is_checked() {
        let policy = |config: &str| error_of(&with_policy("client-id-enforcement", config));
        assert_eq!(
            policy("    clientIdExpression: \"#[attributes.headers['x']]\"\n"),
            "15: spec.config.clients: missing required field `clients` (or `clientsFile`)"
        );
        assert_eq!(
            policy("    clients: []\n"),
            "16: spec.config.clients: must list at least one client"
        );
        assert_eq!(
            policy(
                "    credentialsOriginHasHttpBasicAuthenticationHeader: header\n    \
                 clients: [{clientId: a}]\n"
            ),
            "16: spec.config.credentialsOriginHasHttpBasicAuthenticationHeader: expected \
             `customExpression` or `httpBasicAuthenticationHeader`, found `header`"
        );
        assert_eq!(
            policy(
                "    clientIdExpression: \"#[attributes.headers['a'] ++ attributes.method]\"\n    \
                 clients: [{clientId: a}]\n"
            ),
            "16: spec.config.clientIdExpression: must name one request attribute"
        );
        assert!(policy(
            "    clientSecretExpression: \"#[payload.secret]\"\n    clients: [{clientId: a}]\n"
        )
        .starts_with("16: spec.config.clientSecretExpression: unsupported expression"));
        assert_eq!(
            policy("    clients:\n      - {clientId: a, clientSecret: s}\n"),
            "17: spec.config.clients[0].clientSecret: there is no `clientSecretExpression` to \
             read the secret from requests: set one, or leave the secret out"
        );
        assert_eq!(
            policy("    clients:\n      - {clientId: a}\n      - {clientId: a}\n"),
            "18: spec.config.clients[1].clientId: client `a` is listed twice"
        );
        assert_eq!(
            policy("    clients:\n      - {clientId: ''}\n"),
            "17: spec.config.clients[0].clientId: must not be empty"
        );
        assert!(policy("    clients:\n      - {id: a}\n")
            .starts_with("17: spec.config.clients[0].id: unknown field `id`"));
        assert!(policy("    clients: [{clientId: a}]\n    apiKeys: []\n")
            .starts_with("17: spec.config.apiKeys: unknown field `apiKeys`"));
    }

    #[test]
    fn an_inline_list_keeps_its_instance_across_a_reload() {
        let yaml = with_policy("client-id-enforcement", "    clients: [{clientId: a}]\n");
        let (snapshot, first) = compiled(&yaml).expect("valid");
        let again = compile(&snapshot, Some(&first), &Default::default()).expect("valid");
        assert!(Arc::ptr_eq(
            &first.chains[0].entries[0].policy,
            &again.chains[0].entries[0].policy
        ));
    }
}
