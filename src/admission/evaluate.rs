//! One pod, evaluated: the platforms of its images looked up (with the
//! credentials of its pull secrets, within a deadline), then the decision.
//! The webhook, `archway review` and `archway audit` all come through here
//! and differ only in how they show the result.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::Reviewer;
use crate::decision::placement::{self, ContainerImage, Decision, DecisionInput, ImageLookup};
use crate::decision::policy::NamespacePolicy;
use crate::lookup::cache::CacheOutcome;
use crate::lookup::registry::{ImagePlatforms, InspectError, Keyring};

/// More distinct images than any real pod has; each costs a lookup.
pub const MAX_IMAGES_PER_POD: usize = 64;

/// What the lookups found and what the decision made of it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: Decision,
    /// One per container, in `placement::container_images` order; empty
    /// when the decision needed no lookup.
    pub lookups: Vec<(ContainerImage, ImageLookup)>,
    /// About the pod's pull secrets, for the pod's author.
    pub warnings: Vec<String>,
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// Images whose lookup was still running at the deadline (not failed:
    /// running, and filling the cache in the background). The gate holds
    /// a pod for these.
    pub pending: Vec<String>,
}

impl Evaluation {
    /// A decision made without a lookup.
    pub fn unchanged(decision: Decision) -> Evaluation {
        Evaluation {
            decision,
            lookups: Vec::new(),
            warnings: Vec::new(),
            cache_hits: 0,
            cache_misses: 0,
            pending: Vec::new(),
        }
    }
}

impl Reviewer {
    /// Evaluates `pod` (its namespace set) under `policy`: every distinct
    /// image looked up once, all bounded by `deadline`. `request_uid` names
    /// the pod for its rollout bucket while it has no name, unless `draw`
    /// gives its place in its workload's sequence (`RolloutDraws`).
    pub async fn evaluate(
        &self,
        pod: &Pod,
        policy: &NamespacePolicy,
        deadline: tokio::time::Instant,
        request_uid: &str,
        draw: Option<u64>,
    ) -> Evaluation {
        if let Some(decision) = placement::screen(pod) {
            return Evaluation::unchanged(decision);
        }
        let images = placement::container_images(pod);
        let mut evaluation = Evaluation::unchanged(placement::not_opted_in());
        let mut distinct = images.iter().map(|c| c.image.as_str()).collect::<Vec<_>>();
        distinct.sort_unstable();
        distinct.dedup();
        // One lookup per container, in `images` order.
        let per_container: Vec<ImageLookup> = if distinct.len() > MAX_IMAGES_PER_POD {
            let reason = format!(
                "the pod has {} distinct images, more than archway inspects ({MAX_IMAGES_PER_POD})",
                distinct.len()
            );
            let failed = |_: &ContainerImage| ImageLookup::Failed(reason.clone());
            images.iter().map(failed).collect()
        } else {
            let (keyring, warnings) = self.pull_secret_keyring(pod, deadline).await;
            evaluation.warnings = warnings;
            // Registry misses are charged to the pod's namespace, so one
            // namespace cannot spend every other's share of the registry.
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let requester = self.inspector.requester(namespace);
            // In `distinct` order.
            let found = self
                .look_up(&distinct, &keyring, &requester, deadline)
                .await;
            let count = |outcome| found.iter().filter(|f| f.outcome == Some(outcome)).count();
            evaluation.cache_hits = count(CacheOutcome::Hit);
            evaluation.cache_misses = count(CacheOutcome::Miss);
            evaluation.pending = (distinct.iter().zip(&found))
                .filter(|(_, f)| f.pending)
                .map(|(image, _)| image.to_string())
                .collect();
            // Each container's lookup points at its image's shared answer:
            // `distinct` is sorted, so a binary search finds it.
            images
                .iter()
                .map(|c| {
                    let index = distinct.binary_search(&c.image.as_str());
                    // Always there: `distinct` is made of these images.
                    found[index.unwrap_or_default()].lookup()
                })
                .collect()
        };
        let lookups: Vec<_> = images.into_iter().zip(per_container).collect();
        let nodes = (self.node_inventory.as_ref()).and_then(|n| n.nodes());
        let hold = self.holds.as_ref().and_then(|h| h.for_pod(pod));
        evaluation.decision = placement::decide_screened(&DecisionInput {
            pod,
            policy,
            lookups: &lookups,
            settings: &self.settings.decision,
            request_uid,
            draw,
            nodes: nodes.as_deref(),
            hold: hold.as_ref(),
        });
        evaluation.lookups = lookups;
        evaluation
    }

    /// The credentials of the pull secrets the pod names (the ServiceAccount
    /// admission plugin has already copied the ServiceAccount's into it),
    /// and warnings about those it could not read.
    async fn pull_secret_keyring(
        &self,
        pod: &Pod,
        deadline: tokio::time::Instant,
    ) -> (Keyring, Vec<String>) {
        let (Some(secrets), Some(spec)) = (&self.pull_secrets, &pod.spec) else {
            return (Keyring::default(), Vec::new());
        };
        let names: Vec<String> = spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return (Keyring::default(), Vec::new());
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        // Boxed, here only: inline, the reading of secrets (a few KB of
        // future) would make every review's future that much larger.
        let keyring = Box::pin(secrets.keyring(namespace, &names));
        match tokio::time::timeout_at(deadline, keyring).await {
            Ok((keyring, warnings)) => (keyring, warnings),
            Err(_) => {
                let timeout = "pull secrets not read within the time budget";
                (Keyring::default(), vec![timeout.into()])
            }
        }
    }

    /// Every image looked up at once, each bounded by the deadline; a lookup
    /// still running then goes on filling the cache. One answer per image,
    /// in `images` order.
    async fn look_up(
        &self,
        images: &[&str],
        keyring: &Keyring,
        requester: &crate::lookup::cache::Requester,
        deadline: tokio::time::Instant,
    ) -> Vec<Found> {
        let lookups = images.iter().map(|&image| async move {
            let (result, outcome) = match self.inspector.parse_reference(image) {
                Err(e) => (Err(InspectError::InvalidReference(e.reason)), None),
                Ok(reference) => {
                    // The pod's own credential for the image, else anonymous
                    // (the registry client then tries the cluster's own).
                    let credential = keyring.lookup(&reference);
                    let lookup = self
                        .inspector
                        .inspect_for(&reference, &credential, requester);
                    match tokio::time::timeout_at(deadline, lookup).await {
                        Ok((result, outcome)) => (result, Some(outcome)),
                        Err(_) => (Err(InspectError::Deadline), Some(CacheOutcome::Miss)),
                    }
                }
            };
            // Dropping the wait does not cancel the lookup: `inspect_for`
            // runs it on its own task, which goes on filling the cache.
            let pending = matches!(result, Err(InspectError::Deadline));
            Found {
                result: result.map_err(|error| error.to_string()),
                outcome,
                pending,
            }
        });
        futures::future::join_all(lookups).await
    }
}

/// One image's answer, as the cache shares it.
struct Found {
    /// The error as people read it.
    result: Result<Arc<ImagePlatforms>, String>,
    /// `None` for an image not looked up (an invalid reference).
    outcome: Option<CacheOutcome>,
    /// Still running at the deadline.
    pending: bool,
}

impl Found {
    /// The answer as a container's lookup: the cache's platform set itself
    /// (an `Arc`), or its own copy of the error.
    fn lookup(&self) -> ImageLookup {
        match &self.result {
            Ok(found) => ImageLookup::Found(found.platforms.clone()),
            Err(reason) => ImageLookup::Failed(reason.clone()),
        }
    }
}
