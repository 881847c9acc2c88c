//! The `http://host:port/path` addresses of listeners (ApiInstance) and upstreams (Service).
//!
//! Only the subset Flex writes is accepted: `http` or `https`, a host (IPv6 in brackets), an
//! optional port (80, or 443 for `https`, when absent) and a path; user info, queries and fragments are errors. Listeners must
//! name an IP so that what is bound is exactly what was written; upstream names are resolved
//! once, at load, so a typo fails validation instead of the first request.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Resolves an upstream host name (a replaceable function so tests need no DNS).
pub(crate) type Resolve<'a> = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + 'a;

pub(crate) fn system_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok((host, port).to_socket_addrs()?.collect())
}

/// An address split into its parts, borrowed from the text.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    scheme: &'a str,
    /// Without IPv6 brackets.
    host: &'a str,
    /// The host and port exactly as written (brackets kept), for the `Host` header.
    authority: &'a str,
    port: u16,
    /// "" or `/segment...`, no trailing slash.
    path: String,
}

fn parse_url(text: &str) -> Result<Url<'_>, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "`{text}` is not an address like `http://host:port`"
        ));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err("user names and passwords are not allowed in addresses".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("unclosed `[` in `{authority}`"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("unexpected `{after}` after `]`")),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("IPv6 addresses must be written in brackets, e.g. `[::1]:8080`".into())
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    let port = match port {
        None if scheme.eq_ignore_ascii_case("https") => 443,
        None => 80,
        Some(port) => port
            .parse::<u16>()
            .map_err(|_| format!("`{port}` is not a port number (0-65535)"))?,
    };
    Ok(Url {
        scheme,
        host,
        authority,
        port,
        path: normalise_path(path)?,
    })
}

fn check_path(path: &str) -> Result<(), String> {
    match path
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        Some(bad) => Err(format!("path `{path}` must not contain {bad:?}")),
        None => Ok(()),
    }
}

/// Checks an address's path and drops trailing slashes (`/` becomes "").
fn normalise_path(path: &str) -> Result<String, String> {
    check_path(path)?;
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() || trimmed.starts_with('/') {
        Ok(trimmed.to_owned())
    } else {
        Ok(format!("/{trimmed}"))
    }
}

/// Checks a route's `destinationPath`, which keeps its trailing slash (`/v2/` forwards
/// `/orders` as `/v2/orders`, and so does `/v2`).
pub(crate) fn destination_path(path: &str) -> Result<String, String> {
    check_path(path)?;
    if path.starts_with('/') {
        Ok(path.to_owned())
    } else {
        Ok(format!("/{path}"))
    }
}

/// Whether a scheme is `https` (`true`) or `http` (`false`).
fn is_https(scheme: &str) -> Result<bool, String> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Ok(false),
        "https" => Ok(true),
        other => Err(format!(
            "unsupported scheme `{other}`; expected `http://` or `https://`"
        )),
    }
}

/// An ApiInstance's `spec.address`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Listen {
    pub addr: SocketAddr,
    /// "" or `/base`, without a trailing slash.
    pub base_path: String,
    /// `https://`: the listener terminates TLS (with the `tls` policy of its port).
    pub https: bool,
}

/// An ApiInstance's `spec.address`: the socket to bind, the base path and the scheme.
pub(crate) fn parse_listen(text: &str) -> Result<Listen, String> {
    let url = parse_url(text)?;
    let https = is_https(url.scheme)?;
    let ip = if url.host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        url.host.parse::<IpAddr>().map_err(|_| {
            format!(
                "listen host `{}` must be an IP address (`0.0.0.0`, `[::]`, `127.0.0.1`, ...) or `localhost`",
                url.host
            )
        })?
    };
    Ok(Listen {
        addr: SocketAddr::new(ip, url.port),
        base_path: url.path,
        https,
    })
}

/// A Service's `spec.address`, resolved.
#[derive(Debug)]
pub(crate) struct UpstreamAddress {
    pub addrs: Vec<SocketAddr>,
    pub authority: String,
    pub path: String,
    pub https: bool,
    /// The host as written, without IPv6 brackets: the TLS server name by default.
    pub host: String,
}

pub(crate) fn parse_upstream(text: &str, resolve: &Resolve<'_>) -> Result<UpstreamAddress, String> {
    let url = parse_url(text)?;
    let https = is_https(url.scheme)?;
    let addrs = match url.host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, url.port)],
        Err(_) => match resolve(url.host, url.port) {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => return Err(format!("cannot resolve `{}`: no addresses", url.host)),
            Err(e) => return Err(format!("cannot resolve `{}`: {e}", url.host)),
        },
    };
    Ok(UpstreamAddress {
        addrs,
        authority: url.authority.to_owned(),
        path: url.path,
        https,
        host: url.host.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dns(host: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such host {host}"),
        ))
    }

    #[test]
    fn listen_addresses() {
        let v4 = |s: &str| parse_listen(s).map(|l| (l.addr.to_string(), l.base_path));
        assert_eq!(
            v4("http://0.0.0.0:8081"),
            Ok(("0.0.0.0:8081".into(), "".into()))
        );
        assert_eq!(
            v4("http://localhost:0/api/"),
            Ok(("127.0.0.1:0".into(), "/api".into()))
        );
        assert_eq!(
            v4("http://[::]:80/a/b"),
            Ok(("[::]:80".into(), "/a/b".into()))
        );
        assert_eq!(v4("HTTP://10.1.2.3"), Ok(("10.1.2.3:80".into(), "".into())));
        assert_eq!(
            v4("http://127.0.0.1:8080/"),
            Ok(("127.0.0.1:8080".into(), "".into()))
        );
        let err = |s: &str| parse_listen(s).err().unwrap_or_default();
        assert_eq!(
            parse_listen("https://127.0.0.1/api"),
            Ok(Listen {
                addr: "127.0.0.1:443".parse().expect("addr"),
                base_path: "/api".into(),
                https: true,
            })
        );
        assert!(!parse_listen("http://127.0.0.1").expect("http").https);
        assert!(err("http://example.com:80").contains("must be an IP address"));
        assert!(err("http://0.0.0.0:99999").contains("not a port number"));
        assert!(err("http://0.0.0.0:80/a?b").contains("must not contain '?'"));
        assert!(err("0.0.0.0:80").contains("not an address"));
        assert!(err("http://::1:80").contains("brackets"));
        assert!(err("http://u:p@1.2.3.4").contains("user names"));
        assert!(err("ftp://1.2.3.4").contains("unsupported scheme `ftp`"));
        assert!(err("ftp://1.2.3.4").contains("`https://`"));
    }

    #[test]
    fn upstream_addresses() {
        let up = parse_upstream("http://127.0.0.1:9100/", &no_dns).expect("literal");
        assert_eq!(up.addrs, vec!["127.0.0.1:9100".parse().expect("addr")]);
        assert_eq!(
            (up.authority.as_str(), up.path.as_str()),
            ("127.0.0.1:9100", "")
        );
        let up = parse_upstream("http://[::1]/api/", &no_dns).expect("v6");
        assert_eq!(up.addrs, vec!["[::1]:80".parse().expect("addr")]);
        assert_eq!((up.authority.as_str(), up.path.as_str()), ("[::1]", "/api"));
        let fake = |host: &str, port: u16| {
            assert_eq!((host, port), ("orders.internal", 9000));
            Ok(vec!["10.0.0.7:9000".parse().expect("addr")])
        };
        let up = parse_upstream("http://orders.internal:9000/v1", &fake).expect("resolved");
        assert_eq!(up.authority, "orders.internal:9000");
        assert_eq!(up.addrs.len(), 1);
        let err = parse_upstream("http://nowhere:1", &no_dns).expect_err("unresolvable");
        assert!(err.starts_with("cannot resolve `nowhere`"), "{err}");
        let up = parse_upstream("https://1.2.3.4", &no_dns).expect("https");
        assert!(up.https);
        assert_eq!(up.addrs, vec!["1.2.3.4:443".parse().expect("addr")]);
        assert_eq!(
            (up.host.as_str(), up.authority.as_str()),
            ("1.2.3.4", "1.2.3.4")
        );
        let up = parse_upstream("https://[::1]:8443", &no_dns).expect("v6");
        assert_eq!(up.host, "::1");
        assert!(
            !parse_upstream("http://1.2.3.4", &no_dns)
                .expect("http")
                .https
        );
    }

    #[test]
    fn localhost_resolves_through_the_system() {
        let up = parse_upstream("http://localhost:9000", &system_resolve).expect("localhost");
        assert!(up
            .addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 9000));
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise_path("/"), Ok(String::new()));
        assert_eq!(normalise_path(""), Ok(String::new()));
        assert_eq!(normalise_path("/v2/"), Ok("/v2".into()));
        assert_eq!(normalise_path("v2"), Ok("/v2".into()));
        assert!(normalise_path("/a b").is_err());
        assert_eq!(destination_path("/v2/"), Ok("/v2/".into()));
        assert_eq!(destination_path("v2"), Ok("/v2".into()));
        assert!(destination_path("/v2?x").is_err());
    }
}
