//! The commands besides `serve`: `review` (a YAML file, offline), `audit`
//! (a cluster's workloads), `inspect` (images).

pub mod audit;
pub mod inspect;
pub mod review;
pub mod rollback;
