//! The pure core: what archway decides, with no I/O and no clock. Lookups
//! happen before (`lookup`, `admission`), writes after (`controllers`).

pub mod compare;
pub mod cost;
pub mod gating;
pub mod patch;
pub mod placement;
pub mod platform;
pub mod policy;
pub mod ramp;
pub mod text;
