//! The one way archway writes an Event (`events.k8s.io/v1`): on a pod the
//! gate let go, on a workload the guard held, on a namespace whose
//! settings are wrong or whose ramp moved.
//!
//! An Event is kept in the namespace of what it regards, so the people who
//! work there see it (`kubectl get events -n shop`). Its note is cut short
//! (the API server refuses notes over 1 kB). An Event that must be told
//! once whatever the replica count gets a name of its caller's making, the
//! same in every replica: the second create is refused as existing.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Tries of one create while the API server fails (not when it refuses).
const TRIES: u32 = 3;

/// What an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regarding {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Regarding {
    /// A namespace (its Events are kept in itself).
    pub fn namespace(name: &str, uid: Option<String>) -> Regarding {
        Regarding {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: name.to_string(),
            name: name.to_string(),
            uid,
            resource_version: None,
        }
    }
}

/// Whether an Event tells of something normal or of trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// One Event to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub kind: Kind,
    /// `InvalidArchwaySetting`, `GateTimeout`, `ArchitectureHold`, ...
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
    pub regarding: Regarding,
    /// A name every replica makes alike, for an Event told once; `None`:
    /// named after what it regards and the time, as client-go names them.
    pub name: Option<String>,
}

/// How a create ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Created,
    /// An Event of that name exists: another replica (or this one before a
    /// restart) told it.
    AlreadyTold,
}

/// Writes Events as one controller of archway's.
#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    /// `reportingController`, e.g. `archway.dev/gate`.
    controller: &'static str,
    /// `reportingInstance`: this replica.
    instance: String,
}

impl EventRecorder {
    pub fn new(client: kube::Client, controller: &'static str, instance: &str) -> EventRecorder {
        EventRecorder {
            client,
            controller,
            instance: instance.chars().take(128).collect(),
        }
    }

    /// Creates the Event, trying again while the API server fails (5xx,
    /// 429, no answer); a refusal (403, 404, 422) is final.
    pub async fn record(&self, event: NewEvent) -> Result<Recorded, kube::Error> {
        let namespace = event.regarding.namespace.clone();
        let event = build(event, self.controller, &self.instance);
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let mut wait = Duration::from_secs(1);
        let mut tries = 1;
        loop {
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => return Ok(Recorded::Created),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Ok(Recorded::AlreadyTold);
                }
                Err(kube::Error::Api(status))
                    if tries < TRIES && (status.code >= 500 || status.code == 429) => {}
                Err(kube::Error::Api(status)) => return Err(kube::Error::Api(status)),
                Err(_) if tries < TRIES => {}
                Err(error) => return Err(error),
            }
            tokio::time::sleep(wait).await;
            wait *= 4;
            tries += 1;
        }
    }
}

/// The Event object for `event`, as `controller`'s `instance` reports it.
pub fn build(event: NewEvent, controller: &str, instance: &str) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    let NewEvent {
        kind,
        reason,
        action,
        note,
        regarding,
        name,
    } = event;
    let name = name.unwrap_or_else(|| {
        // As client-go names Events: the object's name and the time.
        let object: String = regarding.name.chars().take(200).collect();
        format!("{object}.{:x}", now.as_nanosecond())
    });
    Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(regarding.namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(action.into()),
        reason: Some(reason.into()),
        note: Some(crate::decision::text::truncate_note(&note)),
        type_: Some(
            match kind {
                Kind::Normal => "Normal",
                Kind::Warning => "Warning",
            }
            .into(),
        ),
        reporting_controller: Some(controller.into()),
        reporting_instance: Some(instance.into()),
        regarding: Some(ObjectReference {
            api_version: Some(regarding.api_version),
            kind: Some(regarding.kind),
            name: Some(regarding.name),
            namespace: Some(regarding.namespace),
            uid: regarding.uid,
            resource_version: regarding.resource_version,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_kept_beside_what_it_regards_with_a_short_note() {
        let event = build(
            NewEvent {
                kind: Kind::Warning,
                reason: "RampPaused",
                action: "Ramp",
                note: "x".repeat(5000),
                regarding: Regarding::namespace("shop", Some("u".into())),
                name: Some("shop.archway-ramp.1".into()),
            },
            "archway.dev/autopilot",
            "archway-0",
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(event.metadata.name.as_deref(), Some("shop.archway-ramp.1"));
        assert!(event.note.unwrap().len() <= 1003);
        let regarding = event.regarding.unwrap();
        assert_eq!(
            (regarding.kind.as_deref(), regarding.namespace.as_deref()),
            (Some("Namespace"), Some("shop"))
        );
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        // Unnamed: after the object and the time.
        let unnamed = build(
            NewEvent {
                kind: Kind::Normal,
                reason: "RampStep",
                action: "Ramp",
                note: "n".into(),
                regarding: Regarding::namespace("shop", None),
                name: None,
            },
            "c",
            "i",
        );
        assert!(unnamed.metadata.name.unwrap().starts_with("shop."));
    }
}
