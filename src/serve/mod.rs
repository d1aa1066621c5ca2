//! `archway serve`: the runtime that starts every component and stops them
//! (`runtime`, through `components`), the HTTPS and admin servers (`server`), configuration
//! reloads (`reload`).

pub mod components;
pub mod reload;
pub mod runtime;
pub mod server;
