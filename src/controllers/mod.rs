//! What runs beside the webhook in `archway serve` and writes to the
//! cluster: the gate controller (`gate`), the rollout guard (`guard`) and
//! the settings reporter (`settings_report`).

pub mod gate;
pub mod guard;
pub mod settings_report;
