//! End-to-end suite: one binary, one module per area.

mod auth;
mod completions;
mod egress;
mod limits;
mod reload;
mod sandbox;
mod toolchains;
