//! A pod that already carries archway's decision, reviewed again.
//!
//! Mutating webhooks run in name order, so archway usually runs before a
//! service mesh or agent injector that adds a sidecar. With
//! `reinvocationPolicy: IfNeeded` the API server calls archway once more
//! after such a change; the sidecar's image has not been checked. The same
//! path serves a pod re-created from one archway patched (`kubectl get -o
//! yaml`, edited, applied): both carry archway's annotation and its
//! expression.
//!
//! archway's own expression is recognised by its shape: exactly one
//! `kubernetes.io/arch In` expression, with the same values, in every
//! required term, and no arch in nodeSelector. archway writes it only
//! into pods that had no arch constraint of their own (those are
//! `user_choice` and get no annotation), so in a pod carrying archway's
//! annotation that shape is archway's. Anything else is left alone.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;

use super::{
    ARCH_LABEL, ARCH_POD_LABEL, ARCHS_ANNOTATION, BETA_ARCH_LABEL, ContainerImage,
    DECISION_ANNOTATION, Decision, DecisionInput, DecisionKind, ImageLookup, Injection, Mode,
    Outcome, PodOs, describe_set, failures, join, os_name, pod_os, refuse, required_terms,
    supported_architectures,
};

/// The decision for a pod that already carries archway's decision
/// (`previous`): unchanged while what archway required still runs every
/// image, else archway's own expression rewritten to what does (or removed
/// when nothing does), with a warning either way.
pub(super) fn recheck(input: &DecisionInput<'_>, previous: &str) -> Decision {
    // The annotation may come from the pod's author: what archway repeats
    // of it stays short.
    let previous = shortened(previous);
    let previous = previous.as_str();
    let already = || {
        Decision::unchanged(
            DecisionKind::AlreadyDecided,
            format!("already decided: {previous}"),
        )
    };
    let Some(required) = own_requirement(input.pod) else {
        return already();
    };
    let PodOs::Known(os) = pod_os(input.pod) else {
        return already();
    };
    let Some(supported) = supported_architectures(input.lookups, &os) else {
        let mut warnings = vec![
            "another webhook changed the pod after archway placed it, and its images could not all be checked again".to_string(),
        ];
        warnings.extend(failures(input.lookups));
        return refuse(
            input,
            DecisionKind::InspectionFailed,
            "some images could not be inspected again",
            warnings,
            None,
        );
    };
    if required.is_subset(&supported) {
        return Decision {
            supported: Some(supported),
            ..already()
        };
    }
    let dropped: BTreeSet<String> = required.difference(&supported).cloned().collect();
    let lacking = lacking(input.lookups, &os, &dropped);
    if supported.is_empty() {
        let warning = format!(
            "containers added after archway placed the pod ({lacking}) leave its images no common {} architecture; archway removed its kubernetes.io/arch requirement ({})",
            os_name(&os),
            join(&required)
        );
        let denied = input.settings.fail_closed && input.policy.mode == Mode::Enforce;
        if denied {
            return refuse(
                input,
                DecisionKind::NoCommonArchitecture,
                &format!("images share no {} architecture", os_name(&os)),
                vec![warning],
                Some(supported),
            );
        }
        let reason = format!("none: removed after reinvocation, {lacking}; was {previous}");
        return corrected(os, BTreeSet::new(), &supported, reason, warning, false);
    }
    // Keep what still runs every image; when nothing does, go where the
    // images run now rather than leave the pod waiting for a node it
    // would crash on.
    let kept: BTreeSet<String> = required.intersection(&supported).cloned().collect();
    let now = if kept.is_empty() {
        supported.clone()
    } else {
        kept
    };
    let warning = format!(
        "containers added after archway placed the pod do not run on {} ({lacking}); archway now requires {} (was {})",
        join(&dropped),
        join(&now),
        join(&required)
    );
    let reason = format!(
        "{}: corrected after reinvocation, {lacking}; was {previous}",
        join(&now)
    );
    // The guard's label says which side the rollout chose: it follows the
    // correction (a pod the rollout did not label stays unlabelled).
    let labelled =
        (input.pod.metadata.labels.as_ref()).is_some_and(|l| l.contains_key(ARCH_POD_LABEL));
    corrected(os, now, &supported, reason, warning, labelled)
}

/// At most `MAX_PREVIOUS` characters of `text`, marked when cut.
fn shortened(text: &str) -> String {
    const MAX_PREVIOUS: usize = 160;
    match text.char_indices().nth(MAX_PREVIOUS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn corrected(
    os: String,
    required: BTreeSet<String>,
    supported: &BTreeSet<String>,
    reason: String,
    warning: String,
    relabel: bool,
) -> Decision {
    let labels = match (relabel, required.len()) {
        (true, 1) => required
            .iter()
            .map(|arch| (ARCH_POD_LABEL.to_string(), arch.clone()))
            .collect(),
        _ => Default::default(),
    };
    let annotations = [
        (ARCHS_ANNOTATION.to_string(), describe_set(supported, &os)),
        (DECISION_ANNOTATION.to_string(), reason.clone()),
    ]
    .into();
    Decision {
        outcome: Outcome::Inject(Injection {
            tolerate: required.clone(),
            required,
            preferred: None,
            os,
            annotations,
            requirement: super::Requirement::ReplaceOwn,
            labels,
        }),
        kind: DecisionKind::Corrected,
        reason,
        warnings: vec![warning],
        supported: Some(supported.clone()),
        without_nodes: BTreeSet::new(),
        unrunnable_on: BTreeSet::new(),
    }
}

/// The containers whose images lack one of `dropped` for `os`, e.g.
/// `istio-proxy (proxy:1.2) has no arm64`; bounded by the pod's size.
pub(super) fn lacking(
    lookups: &[(ContainerImage, ImageLookup)],
    os: &str,
    dropped: &BTreeSet<String>,
) -> String {
    let described: Vec<String> = lookups
        .iter()
        .filter_map(|(container, lookup)| {
            let ImageLookup::Found(platforms) = lookup else {
                return None;
            };
            let archs: BTreeSet<String> = (platforms.iter())
                .filter(|p| p.os == os)
                .map(|p| p.architecture.clone())
                .collect();
            let missing: BTreeSet<String> = dropped.difference(&archs).cloned().collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "{} ({}) has no {}",
                    container.container,
                    container.image,
                    join(&missing)
                )
            })
        })
        .collect();
    if described.is_empty() {
        "its images' platforms".to_string()
    } else {
        described.join("; ")
    }
}

/// archway's own requirement read back from a pod it patched: the values
/// of the one `kubernetes.io/arch In` expression of every required term.
/// `None` when the pod's arch constraints have any other shape (a later
/// webhook or the pod's author wrote them), which archway leaves alone.
pub fn own_requirement(pod: &Pod) -> Option<BTreeSet<String>> {
    let spec = pod.spec.as_ref()?;
    let is_arch = |key: &str| key == ARCH_LABEL || key == BETA_ARCH_LABEL;
    if spec.node_selector.iter().flatten().any(|(k, _)| is_arch(k)) {
        return None;
    }
    let mut found: Option<BTreeSet<String>> = None;
    for term in required_terms(pod) {
        let mut arch = term
            .match_expressions
            .iter()
            .flatten()
            .filter(|e| is_arch(&e.key));
        let expression = arch.next()?;
        if arch.next().is_some() || expression.key != ARCH_LABEL || expression.operator != "In" {
            return None;
        }
        let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
        match &found {
            Some(previous) if *previous != values => return None,
            Some(_) => {}
            None => found = Some(values),
        }
    }
    found.filter(|values| !values.is_empty())
}

#[cfg(test)]
#[path = "recheck_tests.rs"]
mod tests;
