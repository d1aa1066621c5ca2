//! `archway serve`: the runtime that starts every component and stops them
//! (`runtime`), the HTTPS and admin servers (`server`), configuration
//! reloads (`reload`).

pub mod reload;
pub mod runtime;
pub mod server;
