//! What archway knows of the cluster's nodes: each node's architecture,
//! labels and scheduling taints, by name and by `kubernetes.io/hostname`.
//!
//! Placement reads it for one rule: archway never turns a pod the
//! scheduler could bind into one it cannot. Before it requires an
//! architecture, it checks that some node of that architecture matches the
//! pod's own node selector and required node affinity and carries no
//! taint the pod (with the tolerations archway adds for that architecture)
//! does not tolerate. That covers pods pinned to a pool by its label (as
//! AKS's `agentpool`), to a host, and node pools tainted in ways the
//! configuration does not know.
//!
//! Nodes of one pool share their labels but for the hostname, so nodes are
//! grouped into profiles (labels without the hostname, plus taints and
//! architecture): a pod is matched against a handful of profiles, not
//! against every node, except where its terms name nodes or hostnames.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};

/// The node label a pod pins itself to a node with, besides `nodeName`
/// and `matchFields metadata.name`. Usually equal to the node's name, but
/// not always (some clouds set it to the short host name).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The only field a node selector term's `matchFields` may name.
pub const NAME_FIELD: &str = "metadata.name";

/// The nodes that carry a `kubernetes.io/arch` label, as a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nodes {
    /// Node name -> its profile (an index into `profiles`) and hostname.
    by_name: BTreeMap<String, (usize, Option<String>)>,
    /// `kubernetes.io/hostname` label -> node name.
    by_hostname: BTreeMap<String, String>,
    profiles: Vec<Profile>,
    architectures: BTreeSet<String>,
}

/// One node as the watch reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeArch {
    pub architecture: String,
    /// Its `kubernetes.io/hostname` label, when it has one.
    pub hostname: Option<String>,
    /// Its other labels (the hostname and architecture included or not:
    /// both are added back when a node is matched).
    pub labels: BTreeMap<String, String>,
    /// Its taints.
    pub taints: Vec<NodeTaint>,
}

/// A taint, as far as a toleration is matched on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeTaint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl From<&Taint> for NodeTaint {
    fn from(taint: &Taint) -> NodeTaint {
        NodeTaint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
            effect: taint.effect.clone(),
        }
    }
}

/// What the nodes of one pool share.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Profile {
    architecture: String,
    /// Every label but the hostname (the architecture included).
    labels: BTreeMap<String, String>,
    /// Those that keep pods off (`NoSchedule`, `NoExecute`).
    taints: Vec<NodeTaint>,
}

/// Where a pod can go among the known nodes, given the tolerations
/// archway would add for an architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fit {
    /// Architectures with a node that matches the pod's node selector and
    /// required affinity, and whose taints the pod would tolerate with
    /// archway's tolerations for that architecture.
    pub architectures: BTreeSet<String>,
    /// Architectures (candidates or not) with a node that matches the
    /// pod's selectors, taints aside: where its own constraints let it go.
    pub selected: BTreeSet<String>,
    /// Per architecture that matched but was not tolerated, one taint that
    /// kept the pod off, for the warning.
    pub untolerated: BTreeMap<String, String>,
}

impl NodeArch {
    /// A node's labels and taints as archway keeps them; `None` for a node
    /// without a `kubernetes.io/arch` label, which placement cannot use.
    pub fn new(labels: Option<&BTreeMap<String, String>>, taints: &[Taint]) -> Option<NodeArch> {
        let labels = labels?;
        Some(NodeArch {
            architecture: labels.get(super::ARCH_LABEL)?.clone(),
            hostname: labels.get(HOSTNAME_LABEL).cloned(),
            labels: labels.clone(),
            taints: taints.iter().map(NodeTaint::from).collect(),
        })
    }
}

impl Nodes {
    /// From each node's name and what it reports.
    pub fn new(nodes: &BTreeMap<String, NodeArch>) -> Nodes {
        let mut known = Nodes::default();
        let mut profile_index: BTreeMap<Profile, usize> = BTreeMap::new();
        for (name, node) in nodes {
            let mut labels = node.labels.clone();
            labels.remove(HOSTNAME_LABEL);
            labels.insert(super::ARCH_LABEL.to_string(), node.architecture.clone());
            let profile = Profile {
                architecture: node.architecture.clone(),
                labels,
                taints: node.taints.iter().filter(|t| blocks(t)).cloned().collect(),
            };
            let next = known.profiles.len();
            let index = *profile_index.entry(profile.clone()).or_insert(next);
            if index == next {
                known.profiles.push(profile);
            }
            known
                .by_name
                .insert(name.clone(), (index, node.hostname.clone()));
            if let Some(hostname) = &node.hostname {
                known.by_hostname.insert(hostname.clone(), name.clone());
            }
            known.architectures.insert(node.architecture.clone());
        }
        known
    }

    /// Nodes of the given architectures only, untainted, unlabelled but
    /// for their architecture (for tests and commands that know pools,
    /// not nodes).
    pub fn of_architectures<'a>(archs: impl IntoIterator<Item = &'a str>) -> Nodes {
        let nodes = archs
            .into_iter()
            .map(|arch| {
                let node = NodeArch {
                    architecture: arch.to_string(),
                    ..NodeArch::default()
                };
                (format!("{arch}-node"), node)
            })
            .collect();
        Nodes::new(&nodes)
    }

    /// The architectures that have nodes.
    pub fn architectures(&self) -> &BTreeSet<String> {
        &self.architectures
    }

    /// The architecture of the node named `name`.
    pub fn of_node(&self, name: &str) -> Option<&str> {
        let (profile, _) = self.by_name.get(name)?;
        Some(self.profiles[*profile].architecture.as_str())
    }

    /// The architecture of the node whose hostname label is `hostname`
    /// (or, failing that, whose name is).
    pub fn of_hostname(&self, hostname: &str) -> Option<&str> {
        match self.by_hostname.get(hostname) {
            Some(name) => self.of_node(name),
            None => self.of_node(hostname),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Where a pod with this node selector, these required terms (ORed;
    /// none: no requirement) and these tolerations can go, for each
    /// architecture in `candidates`, with `added(arch)` the tolerations
    /// archway gives a pod it places on `arch`.
    pub fn fit<'t>(
        &self,
        selector: &BTreeMap<String, String>,
        terms: &[NodeSelectorTerm],
        tolerations: &[Toleration],
        candidates: &BTreeSet<String>,
        added: impl Fn(&str) -> &'t [Toleration],
    ) -> Fit {
        let mut fit = Fit::default();
        let mut consider = |profile: &Profile, hostname: Option<&str>, name: Option<&str>| {
            let arch = &profile.architecture;
            if fit.architectures.contains(arch) {
                return;
            }
            let node = NodeView {
                profile,
                hostname,
                name,
            };
            if !node.matches(selector, terms) {
                return;
            }
            fit.selected.insert(arch.clone());
            if !candidates.contains(arch) {
                return;
            }
            let extra = added(arch);
            let untolerated = (profile.taints.iter())
                .find(|taint| !tolerations.iter().chain(extra).any(|t| tolerates(t, taint)));
            match untolerated {
                None => {
                    fit.architectures.insert(arch.clone());
                    fit.untolerated.remove(arch);
                }
                Some(taint) => {
                    fit.untolerated
                        .entry(arch.clone())
                        .or_insert_with(|| describe_taint(taint));
                }
            }
        };
        if terms_name_nodes(terms)
            || selector.contains_key(HOSTNAME_LABEL)
            || needs_each_node(terms)
        {
            // The pod names nodes or asks about hostnames: each node counts.
            for (name, (profile, hostname)) in &self.by_name {
                // A node without the label is matched by its name, as
                // the kubelet sets the label to it by default.
                let hostname = hostname.as_deref().unwrap_or(name);
                consider(&self.profiles[*profile], Some(hostname), Some(name));
            }
        } else {
            for profile in &self.profiles {
                consider(profile, None, None);
            }
        }
        fit
    }
}

impl Nodes {
    /// The nodes a DaemonSet with this template's selector, required terms
    /// and tolerations gets a pod on, as the DaemonSet controller decides
    /// (its own tolerations added, `DAEMON_SET_TOLERATIONS`): name and
    /// architecture of each, in name order.
    pub fn daemon_set_nodes(
        &self,
        selector: &BTreeMap<String, String>,
        terms: &[NodeSelectorTerm],
        tolerations: &[Toleration],
    ) -> Vec<(&str, &str)> {
        let own = daemon_set_tolerations();
        let tolerated = |profile: &Profile| {
            (profile.taints.iter())
                .all(|taint| tolerations.iter().chain(&own).any(|t| tolerates(t, taint)))
        };
        (self.by_name.iter())
            .filter_map(|(name, (profile, hostname))| {
                let profile = &self.profiles[*profile];
                let node = NodeView {
                    profile,
                    hostname: Some(hostname.as_deref().unwrap_or(name)),
                    name: Some(name),
                };
                (node.matches(selector, terms) && tolerated(profile))
                    .then_some((name.as_str(), profile.architecture.as_str()))
            })
            .collect()
    }
}

/// The tolerations the DaemonSet controller gives every pod it makes, so
/// that a node's trouble does not evict or keep out its pods.
fn daemon_set_tolerations() -> Vec<Toleration> {
    let toleration = |key: &str, effect: &str| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".into()),
        effect: Some(effect.to_string()),
        ..Toleration::default()
    };
    vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether every term names its nodes: a term pins when it has a
/// `matchFields metadata.name In` or a `kubernetes.io/hostname In`.
pub fn terms_name_nodes(terms: &[NodeSelectorTerm]) -> bool {
    !terms.is_empty() && terms.iter().all(|t| !term_named_nodes(t).is_empty())
}

/// The nodes a term names (node names or hostnames), if it names any.
pub fn term_named_nodes(term: &NodeSelectorTerm) -> Vec<&str> {
    let by_field =
        (term.match_fields.iter().flatten()).find(|f| f.key == NAME_FIELD && f.operator == "In");
    let by_hostname = (term.match_expressions.iter().flatten())
        .find(|e| e.key == HOSTNAME_LABEL && e.operator == "In");
    match by_field.or(by_hostname) {
        Some(requirement) => (requirement.values.iter().flatten())
            .map(String::as_str)
            .collect(),
        None => Vec::new(),
    }
}

/// Whether a term asks something of a node's name or hostname that a
/// profile cannot answer (a `NotIn`, `Exists`...): then nodes are matched
/// one by one.
fn needs_each_node(terms: &[NodeSelectorTerm]) -> bool {
    terms.iter().any(|t| {
        t.match_fields.as_ref().is_some_and(|f| !f.is_empty())
            || (t.match_expressions.iter().flatten()).any(|e| e.key == HOSTNAME_LABEL)
    })
}

/// A node as a pod's terms see it: its profile's labels, its hostname and
/// its name (unknown when matching a whole profile).
struct NodeView<'a> {
    profile: &'a Profile,
    hostname: Option<&'a str>,
    name: Option<&'a str>,
}

impl NodeView<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if key == HOSTNAME_LABEL {
            return self.hostname;
        }
        self.profile.labels.get(key).map(String::as_str)
    }

    /// The scheduler's rule: every nodeSelector entry, and one of the
    /// required terms (none: no requirement).
    fn matches(&self, selector: &BTreeMap<String, String>, terms: &[NodeSelectorTerm]) -> bool {
        let selected = (selector.iter()).all(|(k, v)| self.label(k) == Some(v.as_str()));
        selected && (terms.is_empty() || terms.iter().any(|t| self.matches_term(t)))
    }

    /// A term matches when all its expressions and fields do; a term with
    /// neither matches no node.
    fn matches_term(&self, term: &NodeSelectorTerm) -> bool {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if expressions.is_empty() && fields.is_empty() {
            return false;
        }
        expressions
            .iter()
            .all(|e| requirement_holds(e, self.label(&e.key)))
            && fields.iter().all(|f| {
                // Only metadata.name is a valid field; the API server
                // rejects others, so they match nothing here.
                f.key == NAME_FIELD && requirement_holds(f, self.name)
            })
    }
}

/// A node selector requirement against a label's value (absent: `None`).
fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let listed = |v: &str| values.iter().any(|x| x == v);
    let number = |v: &str| v.parse::<i64>().ok();
    let bound = || values.first().and_then(|v| number(v));
    match (requirement.operator.as_str(), value) {
        ("In", Some(v)) => listed(v),
        ("NotIn", Some(v)) => !listed(v),
        ("NotIn", None) => true,
        ("Exists", v) => v.is_some(),
        ("DoesNotExist", v) => v.is_none(),
        ("Gt", Some(v)) => number(v).zip(bound()).is_some_and(|(v, b)| v > b),
        ("Lt", Some(v)) => number(v).zip(bound()).is_some_and(|(v, b)| v < b),
        _ => false,
    }
}

/// Taints that keep a pod off a node when not tolerated.
fn blocks(taint: &NodeTaint) -> bool {
    matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
}

/// The scheduler's toleration rule: the effect matches (empty: any), the
/// key matches (empty with `Exists`: any), and the value under `Equal`
/// (the default operator).
pub fn tolerates(toleration: &Toleration, taint: &NodeTaint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if key.is_empty() {
        return operator == "Exists";
    }
    if key != taint.key {
        return false;
    }
    match operator {
        "Exists" => true,
        "Equal" | "" => toleration.value.as_deref().unwrap_or_default() == taint.value,
        _ => false,
    }
}

/// `key=value:Effect`, as kubectl shows a taint.
fn describe_taint(taint: &NodeTaint) -> String {
    match taint.value.as_str() {
        "" => format!("{}:{}", taint.key, taint.effect),
        value => format!("{}={value}:{}", taint.key, taint.effect),
    }
}

#[cfg(test)]
mod tests;
