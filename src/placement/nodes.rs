//! What archway knows of the cluster's nodes: each node's architecture, by
//! its name and by its `kubernetes.io/hostname` label. Placement reads it
//! to avoid architectures without nodes, and to check a pod pinned to
//! named nodes against what its images run.

use std::collections::{BTreeMap, BTreeSet};

/// The node label a pod pins itself to a node with, besides `nodeName`
/// and `matchFields metadata.name`. Usually equal to the node's name, but
/// not always (some clouds set it to the short host name).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The nodes that carry a `kubernetes.io/arch` label, as a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nodes {
    by_name: BTreeMap<String, String>,
    by_hostname: BTreeMap<String, String>,
    architectures: BTreeSet<String>,
}

/// One node as the watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeArch {
    pub architecture: String,
    /// Its `kubernetes.io/hostname` label, when it has one.
    pub hostname: Option<String>,
}

impl Nodes {
    /// From each node's name and what it reports.
    pub fn new(nodes: &BTreeMap<String, NodeArch>) -> Nodes {
        let mut known = Nodes::default();
        for (name, node) in nodes {
            known
                .by_name
                .insert(name.clone(), node.architecture.clone());
            if let Some(hostname) = &node.hostname {
                known
                    .by_hostname
                    .insert(hostname.clone(), node.architecture.clone());
            }
            known.architectures.insert(node.architecture.clone());
        }
        known
    }

    /// Nodes of the given architectures only, named as their architecture
    /// (for tests and offline commands that know pools, not nodes).
    pub fn of_architectures<'a>(archs: impl IntoIterator<Item = &'a str>) -> Nodes {
        Nodes {
            architectures: archs.into_iter().map(str::to_string).collect(),
            ..Nodes::default()
        }
    }

    /// The architectures that have nodes.
    pub fn architectures(&self) -> &BTreeSet<String> {
        &self.architectures
    }

    /// The architecture of the node named `name`.
    pub fn of_node(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    /// The architecture of the node whose hostname label is `hostname`
    /// (or, failing that, whose name is).
    pub fn of_hostname(&self, hostname: &str) -> Option<&str> {
        (self.by_hostname.get(hostname))
            .or_else(|| self.by_name.get(hostname))
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_found_by_name_and_by_hostname() {
        let nodes = Nodes::new(&BTreeMap::from([
            (
                "aks-arm-0".to_string(),
                NodeArch {
                    architecture: "arm64".into(),
                    hostname: Some("arm-host-0".into()),
                },
            ),
            (
                "amd-0".to_string(),
                NodeArch {
                    architecture: "amd64".into(),
                    hostname: None,
                },
            ),
        ]));
        assert_eq!(nodes.of_node("aks-arm-0"), Some("arm64"));
        assert_eq!(nodes.of_node("arm-host-0"), None);
        assert_eq!(nodes.of_hostname("arm-host-0"), Some("arm64"));
        // A node without the label is found by its name.
        assert_eq!(nodes.of_hostname("amd-0"), Some("amd64"));
        assert_eq!(nodes.of_hostname("nope"), None);
        let archs: Vec<&str> = nodes.architectures().iter().map(String::as_str).collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        assert_eq!(nodes.len(), 2);
    }
}
