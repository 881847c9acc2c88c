//! Ringwall's data plane: a thread-per-core HTTP/1.1 reverse proxy on io_uring.
//!
//! `server` starts the workers; each `worker` owns a runtime, its listeners and its
//! upstream `pool`; `conn` runs every exchange through its phases; `http` is the
//! protocol code; `gateway` is the routing view of a configuration snapshot, with its
//! compiled per-request `policy` chains; `shared` is the client of the storage replicas
//! share.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod breaker;
pub mod buffers;
pub mod checks;
pub mod conn;
pub mod deadline;
pub mod error;
pub mod gateway;
pub mod health;
pub mod heap;
pub mod http;
pub mod io;
pub mod metrics;
pub mod per_route;
pub mod policy;
pub mod pool;
pub mod runtime_log;
pub mod server;
pub mod shared;
pub mod tls;
pub mod watch;
pub mod worker;
pub mod xdp;
