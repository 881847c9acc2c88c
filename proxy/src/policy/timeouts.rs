//! Flex's timeout policies, for the requests they apply to, each overriding one of the
//! `Configuration`'s timeouts (the last applicable policy in order wins):
//! `response-timeout-flex` (how long the upstream has to start its response, 504 when it does
//! not; `upstreamResponseSeconds`), `stream-idle-timeout-flex` (how long either side of the
//! exchange may stay silent; `streamIdleSeconds`) and `idle-timeout-flex`, Flex's "Upstream
//! Idle Timeout" (how long a pooled upstream connection may sit idle and still be reused;
//! `upstreamConnectionIdleSeconds`).

use std::sync::Arc;
use std::time::Duration;

use ringwall_config::Scope;

use super::{config_fields, Policy, RequestCx, Verdict};

/// Longer than any sensible exchange; a typo of extra zeros is an error, not a hang.
const MAX_SECONDS: f64 = 24.0 * 3600.0;

enum Which {
    Response,
    Stream,
    UpstreamIdle,
}

struct Timeout {
    which: Which,
    after: Duration,
}

pub(super) fn build_response(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    build(spec, scope, Which::Response)
}

pub(super) fn build_stream_idle(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    build(spec, scope, Which::Stream)
}

pub(super) fn build_upstream_idle(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    _env: &super::Env,
) -> Option<Arc<dyn Policy>> {
    build(spec, scope, Which::UpstreamIdle)
}

fn build(
    spec: &ringwall_config::Policy,
    scope: &mut Scope<'_>,
    which: Which,
) -> Option<Arc<dyn Policy>> {
    let fields = config_fields(spec, scope, &["timeout"])?;
    let node = scope.require(&fields, "timeout")?;
    let path = fields.path_of("timeout");
    let seconds = scope.number(node, &path)?;
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        let message = format!("must be more than 0 and at most {MAX_SECONDS} seconds");
        scope.error(node.line, &path, message);
        return None;
    }
    Some(Arc::new(Timeout {
        which,
        after: Duration::from_secs_f64(seconds),
    }))
}

impl Policy for Timeout {
    fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        match self.which {
            Which::Response => cx.overrides.response_timeout = Some(self.after),
            Which::Stream => cx.overrides.stream_idle = Some(self.after),
            Which::UpstreamIdle => cx.overrides.upstream_idle = Some(self.after),
        }
        Verdict::Continue
    }
}
