//! archway: a Kubernetes admission webhook that steers pods to the CPU
//! architectures their images publish.
//!
//! The path of a review, top to bottom: `server` (HTTPS) -> `admission`
//! (review in, response out) -> `placement` (the pure decision) -> `patch`;
//! the lookups it needs come from `policy` (namespaces) and `cache` over
//! `registry` (what images publish). `admission::Reviewer::evaluate` is the
//! one path of a pod through lookups and decision, for the webhook and for
//! the `review` and `audit` commands; `report` holds how commands show
//! results, `cli` only parses flags, and `app` wires `archway serve`
//! together around `server`'s listeners.

pub mod admission;
pub mod app;
pub mod audit;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod compare;
pub mod config;
pub mod cost;
pub mod gate;
pub mod guard;
pub mod image;
pub mod inspect;
pub mod metrics;
pub mod patch;
pub mod placement;
pub mod platform;
pub mod policy;
pub mod ramp;
pub mod registry;
pub mod reload;
pub mod report;
pub mod review;
pub mod server;
pub mod settings_report;
pub mod telemetry;
