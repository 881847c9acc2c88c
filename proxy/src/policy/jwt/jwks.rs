//! The signing keys of `jwtKeyOrigin: jwks`: fetched from `jwksUrl` by a thread of the policy
//! instance's own, and published to the workers through an [`ArcSwap`], so a request reads the
//! current key set without a lock.
//!
//! The thread fetches at once, then every `jwksServiceTimeToLive`; a failed fetch is retried
//! sooner (from 1 s, doubling up to 30 s) and keeps the keys of the last good one. A token
//! whose `kid` is not in the set (or, without a `kid`, that no key verifies) asks for an early
//! fetch, at most one every [`EARLY_REFRESH_GAP`], so rotated keys are picked up without
//! waiting for the TTL; the request itself is refused, never held. The thread holds the instance's state weakly: when a reload
//! drops the instance, it wakes and ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use rsa::{BigUint, RsaPublicKey};

/// The least time between two fetches asked for by unknown `kid`s: a client sending made-up
/// key IDs costs the identity provider at most one request per gap.
pub(super) const EARLY_REFRESH_GAP: Duration = Duration::from_secs(5);

/// Retries of a failed fetch start here and double up to [`MAX_RETRY`] (or the TTL if shorter).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A JWKS larger than this is refused: real ones are a few KiB.
const MAX_BODY: u64 = 1 << 20;

/// The keys the workers verify with.
#[derive(Default)]
pub(super) struct KeySet {
    /// Whether a fetch has succeeded yet: before, every token is refused.
    pub loaded: bool,
    pub keys: Vec<Key>,
}

#[derive(Clone)]
pub(super) struct Key {
    pub kid: Option<String>,
    pub key: DecodingKey,
}

impl KeySet {
    pub fn find(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .map(|k| &k.key)
    }
}

/// How the thread fetches: one URL's body, or why not. Tests swap in their own.
pub(super) type Fetch = Box<dyn FnMut(&str) -> Result<String, String> + Send>;

/// What the thread works from.
pub(super) struct Source {
    pub urls: Vec<String>,
    pub alg: Algorithm,
    pub ttl: Duration,
    /// What the instance is called in log lines.
    pub label: String,
}

/// The state a policy instance shares with its fetch thread.
struct Shared {
    keys: ArcSwap<KeySet>,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last early fetch asked for; `u64::MAX` for none.
    last_early: AtomicU64,
    early: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Drop for Shared {
    /// The instance is gone: wake the thread so that it sees it and ends.
    fn drop(&mut self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// A policy instance's handle on its key set.
pub(super) struct Jwks {
    shared: Arc<Shared>,
}

impl Jwks {
    /// Starts the thread; the first fetch begins at once, and the load does not wait for it.
    pub fn start(source: Source, fetch: Fetch) -> Jwks {
        let shared = Arc::new(Shared {
            keys: ArcSwap::from_pointee(KeySet::default()),
            epoch: Instant::now(),
            last_early: AtomicU64::new(u64::MAX),
            early: AtomicBool::new(false),
            thread: OnceLock::new(),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = thread::Builder::new()
            .name("ringwall-jwks".into())
            .spawn(move || run(&weak, &source, fetch));
        match spawned {
            Ok(handle) => {
                let _ = shared.thread.set(handle.thread().clone());
            }
            Err(e) => tracing::error!(error = %e, "cannot start the JWKS fetch thread"),
        }
        Jwks { shared }
    }

    /// The current key set; no lock, no allocation.
    pub fn keys(&self) -> Guard<Arc<KeySet>> {
        self.shared.keys.load()
    }

    /// A token named a key the set does not have: fetch again soon, unless a fetch was asked
    /// for less than [`EARLY_REFRESH_GAP`] ago.
    pub fn ask_refresh(&self) {
        let s = &self.shared;
        let now = u64::try_from(s.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = s.last_early.load(Ordering::Relaxed);
        let gap = EARLY_REFRESH_GAP.as_millis() as u64;
        if last != u64::MAX && now.saturating_sub(last) < gap {
            return;
        }
        if s.last_early
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            s.early.store(true, Ordering::Release);
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The fetch thread: until the instance is dropped, fetch every URL, publish, wait.
fn run(weak: &Weak<Shared>, source: &Source, mut fetch: Fetch) {
    // Each URL's last good keys, so one failing server does not take the others' keys away.
    let mut by_url: Vec<Option<Vec<Key>>> = vec![None; source.urls.len()];
    let mut failing = false;
    let mut retry = FIRST_RETRY;
    loop {
        let mut all_ok = true;
        for (url, slot) in source.urls.iter().zip(&mut by_url) {
            match fetch(url).and_then(|body| parse_set(&body, source.alg)) {
                Ok(keys) => {
                    if keys.is_empty() {
                        tracing::warn!(policy = %source.label, %url,
                            "JWKS has no key for {:?}", source.alg);
                    }
                    *slot = Some(keys);
                }
                Err(error) => {
                    all_ok = false;
                    // One warning per streak of failures, not one per attempt.
                    if !failing {
                        tracing::warn!(policy = %source.label, %url, %error,
                            "cannot fetch the JWKS; keeping the keys already fetched");
                    }
                }
            }
        }
        if failing && all_ok {
            tracing::info!(policy = %source.label, "JWKS fetched again");
        }
        failing = !all_ok;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if by_url.iter().any(Option::is_some) {
            let keys = by_url.iter().flatten().flatten().cloned().collect();
            shared.keys.store(Arc::new(KeySet { loaded: true, keys }));
        }
        drop(shared);
        let wait = if all_ok {
            retry = FIRST_RETRY;
            source.ttl
        } else {
            let wait = retry.min(source.ttl);
            retry = (retry * 2).min(MAX_RETRY);
            wait
        };
        if !sleep(weak, wait) {
            return;
        }
    }
}

/// Waits `wait`, or less when an early fetch is asked for. False when the instance is gone.
fn sleep(weak: &Weak<Shared>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let Some(shared) = weak.upgrade() else {
            return false;
        };
        if shared.early.swap(false, Ordering::Acquire) {
            return true;
        }
        drop(shared);
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::park_timeout(deadline - now);
    }
}

/// Fetches over HTTP(S) with `timeout` for the whole exchange; non-2xx is a failure.
pub(super) fn http_fetch(timeout: Duration) -> Fetch {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .build()
        .into();
    Box::new(move |url| {
        let mut response = agent
            .get(url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| e.to_string())?;
        response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| e.to_string())
    })
}

/// The keys of a JWKS document that can verify `alg`: right key type and curve, `use`
/// absent or `sig`, `alg` absent or `alg`. Keys of other kinds, or that do not parse, are
/// skipped: a set may hold keys for other uses.
pub(super) fn parse_set(body: &str, alg: Algorithm) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_str(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys = set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| {
            let key = usable(&jwk, alg)?;
            Some(Key {
                kid: jwk.common.key_id,
                key,
            })
        })
        .collect();
    Ok(keys)
}

fn usable(jwk: &Jwk, alg: Algorithm) -> Option<DecodingKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    if let Some(a) = jwk.common.key_algorithm {
        if a.to_string().parse::<Algorithm>().ok() != Some(alg) {
            return None;
        }
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) => {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            rsa_checked(&key).then_some(key)
        }
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256 | Algorithm::ES384) => {
            let curve = if alg == Algorithm::ES256 {
                EllipticCurve::P256
            } else {
                EllipticCurve::P384
            };
            if p.curve != curve {
                return None;
            }
            let key = DecodingKey::from_jwk(jwk).ok()?;
            ec_checked(&key, alg).then_some(key)
        }
        _ => None,
    }
}

/// Whether an RSA key given as modulus and exponent is one the backend accepts.
fn rsa_checked(key: &DecodingKey) -> bool {
    match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e)).is_ok()
        }
        DecodingKeyKind::SecretOrDer(_) => false,
    }
}

/// Whether an EC key is a point of `alg`'s curve: the backend parses the key before it
/// looks at the (empty, so wrong) signature.
pub(super) fn ec_checked(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("", b"", key, alg).is_ok()
}
