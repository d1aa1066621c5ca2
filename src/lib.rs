//! archway: a Kubernetes admission webhook that steers pods to the CPU
//! architectures their images publish.
//!
//! The layers, each using only those above it:
//!
//! - `decision`: the pure core. Given a pod, its namespace's policy and the
//!   platforms its images publish, what archway injects and why; the patch;
//!   the gate's patches; the ramp, the comparison and the cost arithmetic.
//!   No I/O, no clock.
//! - `lookup`: what images publish: references read as the kubelet reads
//!   them, the registry client, the cache.
//! - `cluster`: what archway reads of the cluster and how it writes to it
//!   (namespace and node watches, pull secrets, the Lease, Events).
//! - `admission`: one review: the pod read, looked up, decided, answered.
//!   The webhook, `review` and `audit` all come through it.
//! - `controllers`: what runs beside the webhook in `archway serve`: the
//!   gate controller, the rollout guard, the settings reporter.
//! - `serve`: the runtime that starts, leads and stops all of it, and the
//!   HTTPS and admin servers.
//! - `commands`: `review`, `audit`, `inspect` (and `cli`, which parses the
//!   flags and hands over).
//!
//! Beside them: `config` (the file's schema and validation), `metrics`,
//! `telemetry` (logs), `certs` (serving certificates), `report` (tables),
//! `components` (the long-lived tasks and the one stop token every layer
//! that starts a task is handed), and `setup` (a reviewer built from the
//! configuration, for `serve` and the commands). No module uses one below
//! it: `cargo test --test layers` checks the order.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod components;
pub mod config;
pub mod controllers;
pub mod decision;
pub mod lookup;
pub mod metrics;
pub mod report;
pub mod serve;
pub mod setup;
pub mod telemetry;
