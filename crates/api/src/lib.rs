//! hale-api: the HTTP routes that show what Hale knows, and their auth.
//!
//! Liveness and readiness for Kubernetes (`/livez`, `/readyz` and aliases), status and stats
//! JSON (`/internal/status`, `/internal/status/endpoints`, `/internal/stats/models`), the event
//! log of transitions (`/internal/events`) and its live feed as Server-Sent Events
//! (`/internal/events/stream`, [`events_stream`]), the status page (`/ui`, [`ui`]: embedded
//! HTML/CSS/JS that reads those routes; open itself, it holds no data), the shared coordination status
//! (`/health/shared-status`), Prometheus metrics (`/metrics`) and the operator's actions
//! (`POST /internal/reload`, `/internal/endpoints/{name}/drain|enable|check`). `server.admin_token` guards
//! `/internal/*` except `/internal/health`, compared in constant time.
//!
//! The binary builds an [`ApiState`] from the health store, the `server:` config, the version
//! and the [`Metrics`] recorder from [`install_metrics`], adds the views of the later layers
//! ([`BreakerView`], [`SharedStatusView`], [`ModelStatsView`]) when it has them, and merges
//! [`router`] with the proxy's router. Every route reads one lock-free snapshot of the store,
//! so a status page never slows the request path down. [`Server`] is the listener that serves
//! the merged router: its own accept loop over hyper with the `server:` limits (header and
//! idle timeouts, head size) and the drain on SIGTERM; see the [`server`] module.
//!
//! Decisions where DESIGN is silent:
//! - `/internal/health` always answers 200; its `status` field carries the verdict. It is a
//!   report in Olla's shape, not a probe: `/readyz` is the probe.
//! - The admin token also guards paths under `/internal/` that do not exist (401 before 404),
//!   so the set of admin paths cannot be probed without it.
//! - `/ui` needs no token (a browser cannot send one when it navigates); the data the page
//!   reads does, and the page asks for it (see [`ui`]).
//! - `/internal/events?endpoint=X` for an endpoint that is not configured is a 404, not an
//!   empty list, so a typo does not read as "nothing happened".
//! - `/internal/stats/models` lists a model while any endpoint is configured for it or has
//!   reported it, even when none of them is routable.
//! - `url` in the endpoint list drops credentials written into the URL; `api_key` is never a
//!   field.
//! - [`Metrics`] keeps the recorder, not only the handle: `/metrics` writes the per-endpoint
//!   gauges through it at scrape time, and tests use detached recorders that cannot disturb
//!   one another.

pub mod admin;
pub mod auth;
pub mod config;
mod coord_views;
mod counts;
pub mod error;
mod events;
pub mod events_stream;
pub mod fds;
mod format;
mod health_routes;
pub mod metrics;
pub mod providers;
mod proxy_views;
mod router;
pub mod server;
mod shared_status;
pub mod state;
mod stats;
mod status;
#[cfg(test)]
mod testing;
pub mod ui;

pub use config::ServerConfig;
pub use error::ApiError;
pub use metrics::{Metrics, MetricsError, install_metrics};
pub use providers::{AdminActions, BreakerView, ModelStatsView, ReloadReport, SharedStatusView};
pub use router::router;
pub use server::{Limits, Server, ServerHandle};
pub use state::ApiState;
