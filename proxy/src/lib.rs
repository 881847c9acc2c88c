//! Ringwall's data plane.
