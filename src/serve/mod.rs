//! `archway serve`: the runtime that starts every component and stops them
//! (`runtime`, through `crate::components`), the HTTPS and admin servers
//! (`server`), configuration reloads (`reload`).

pub mod reload;
pub mod runtime;
pub mod server;
