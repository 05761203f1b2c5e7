//! Shared HTTP plumbing for the pullback daemons (`exporter`, `pbs`, `importer`).
//!
//! Everything here is small, documented and free of global state:
//!
//! - [`auth`]: per-peer tokens ([`auth::TokenSet`]) and the axum layer
//!   [`auth::require_token`] that guards the authenticated `/v1/` APIs.
//! - [`server`]: [`server::serve`] an axum router over plain HTTP or HTTPS (rustls),
//!   with graceful shutdown; [`server::Server::bind`] reports the bound address.
//! - [`client`]: [`client::Client`], a reqwest wrapper that sends the peer token, trusts
//!   an extra CA, and turns every failure into a [`client::WireError`] naming the URL,
//!   status and the server's message.
//! - [`retry`]: [`retry::retry`] with exponential backoff (also at `client::retry`).
//! - [`metrics`]: a tiny Prometheus text-format registry ([`metrics::Metrics`]).
//! - [`state`]: crash-safe JSON state files ([`state::write_json_atomic`],
//!   [`state::read_json`]) and a daemon's written-through status ([`state::Durable`]).
//! - [`task`]: [`task::blocking`] runs blocking work off the async threads.
//! - [`cron`]: [`cron::Cron`] runs jobs on the daemons' cron schedules.
//! - [`config`]: [`config::load_toml`] with errors naming the file, line and key, and
//!   the [`config::PeerConfig`] / [`config::ListenConfig`] blocks every daemon embeds.
//! - [`cli`]: the binaries' `main` ([`cli::main`], `--config`), logging set-up, RFC 3339
//!   times, exit codes, and the [`cli::admin_client`] a command asks its own daemon with.
//! - [`ha`]: roles, epochs, the role file and the coordinator's HA API types.
//! - [`hook`]: [`hook::run_hook`] runs a hook executable with a timeout that kills its
//!   whole process group, logging its output.
//!
//! TLS uses rustls with the `ring` provider, chosen explicitly (never the process-wide
//! default provider), so no global initialisation is needed.

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod cron;
pub mod ha;
pub mod hook;
pub mod html;
pub mod metrics;
pub mod phase;
pub mod retry;
pub mod server;
pub mod state;
pub mod task;

pub use auth::{require_token, Peer, TokenSet};
pub use client::{chain as error_chain, retry, Backoff, Client, WireError};
pub use config::{load_toml, ListenConfig, PeerConfig, TokenEntry};
pub use hook::{run_hook, run_hook_with, HookOptions, HookOutcome, HookStatus};
pub use metrics::Metrics;
pub use server::{serve, ApiError, Server, TlsFiles};
pub use state::{read_json, write_json_atomic, Durable};
pub use task::{blocking, WorkerFailed};
