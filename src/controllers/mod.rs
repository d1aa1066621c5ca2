//! What runs beside the webhook in `archway serve` and writes to the
//! cluster: the gate controller (`gate`) and the rollout guard
//! (`guard`).

pub mod gate;
pub mod guard;
