//! What runs beside the webhook in `archway serve` and writes to the
//! cluster, in the leader: the gate controller (`gate`), the rollout guard
//! (`guard`) and the migration autopilot (`ramp`).

pub mod gate;
pub mod guard;
pub mod ramp;
