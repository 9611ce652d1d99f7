//! End-to-end suite: one binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: failing loudly is the point")]

mod access_token;
mod agent;
mod anthropic;
mod auth;
mod budgets;
mod cli;
mod code;
mod completions;
mod conformance;
mod connections;
mod doctor;
mod egress;
mod embeddings;
mod fleet;
mod gitlab_registry;
mod hostile_upstream;
mod limits;
mod memory;
mod metrics;
mod model_api;
mod ollama;
mod precompiled;
mod prompts_chat;
mod providers;
mod registry;
mod reload;
mod retries;
mod sandbox;
mod settings;
mod tls;
mod toolchains;
