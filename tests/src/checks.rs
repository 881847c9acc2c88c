//! Assertions several end-to-end test files share: the shape of the gateway's own error
//! responses, and what a refused request must leave behind.

use crate::wire::header_list;
use crate::{Client, Gateway, Origin, Response};

/// Asserts the contract's shape of an error response.
#[track_caller]
pub fn assert_error(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{resp:?}");
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "error response without Content-Type: text/plain: {resp:?}"
    );
    assert!(!resp.body.is_empty(), "error response without a body");
}

/// Sends `raw` on a fresh connection and asserts a `status` error, `Connection: close`, the
/// connection closed, nothing forwarded, and the gateway still serving new connections
/// (on api `api`, whose routes all lead to `origin`).
#[track_caller]
pub fn assert_rejected_and_closed(gw: &Gateway, origin: &Origin, raw: &[u8], status: u16) {
    let before = origin.request_count();
    let mut client = Client::connect(gw.addr("api"));
    // The gateway may answer and close before it has read everything.
    let _ = client.send_lenient(raw);
    let resp = client.read_response("GET");
    assert_error(&resp, status);
    assert!(
        header_list(&resp.headers, "connection", true).contains(&"close".into()),
        "no `Connection: close` on a {status}: {resp:?}"
    );
    client.assert_closed();
    assert_eq!(
        origin.request_count(),
        before,
        "a rejected request reached the origin"
    );
    let after = Client::connect(gw.addr("api")).get("/after");
    assert_eq!(
        after.status, 200,
        "the gateway stopped serving after a bad request: {after:?}"
    );
    // Only the follow-up request reached the origin.
    assert_eq!(origin.request_count(), before + 1);
}
