//! What the move saves: requested CPU and memory priced per architecture.
//! Pure arithmetic over the `cost:` section of the configuration; prices
//! are the user's (archway ships none as facts: docs/configuration.md shows
//! one way to read them off the Azure retail prices).
//!
//! A missing price is an error for that architecture, said as such
//! ("no price for arm64"), never a zero that would read as free.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Hours in an average month (365.25 × 24 / 12), as cloud price sheets
/// count a month.
pub const HOURS_PER_MONTH: f64 = 730.5;

/// The `cost:` section: prices per architecture.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CostConfig {
    /// Currency shown beside figures (`USD`); only a label.
    pub currency: Option<String>,
    /// Per architecture, e.g. `arm64: {vcpuHour: 0.0385, gibHour: 0.0048}`.
    pub prices: BTreeMap<String, Price>,
}

/// What a vCPU and a GiB of memory cost for an hour on one architecture:
/// given directly, or as a node type's hourly price with its size (the
/// price is then split by `cpuShare` between CPU and memory).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, untagged)]
pub enum Price {
    PerResource {
        #[serde(rename = "vcpuHour")]
        vcpu_hour: f64,
        #[serde(rename = "gibHour")]
        gib_hour: f64,
    },
    PerNode {
        /// e.g. `Standard_D4pds_v5`, for the report only.
        #[serde(rename = "nodeType")]
        node_type: Option<String>,
        #[serde(rename = "nodeHour")]
        node_hour: f64,
        vcpus: f64,
        #[serde(rename = "memoryGiB")]
        memory_gib: f64,
        /// The share of the node's price that buys its CPU (default 0.5).
        #[serde(rename = "cpuShare", default = "half")]
        cpu_share: f64,
    },
}

fn half() -> f64 {
    0.5
}

impl Price {
    /// (per vCPU-hour, per GiB-hour).
    pub fn rates(&self) -> Result<(f64, f64), String> {
        let (cpu, memory) = match *self {
            Price::PerResource {
                vcpu_hour,
                gib_hour,
            } => (vcpu_hour, gib_hour),
            Price::PerNode {
                node_hour,
                vcpus,
                memory_gib,
                cpu_share,
                ..
            } => {
                if !(vcpus > 0.0 && memory_gib > 0.0 && (0.0..=1.0).contains(&cpu_share)) {
                    return Err(
                        "a node price needs vcpus and memoryGiB above 0 and a cpuShare from 0 to 1"
                            .into(),
                    );
                }
                (
                    node_hour * cpu_share / vcpus,
                    node_hour * (1.0 - cpu_share) / memory_gib,
                )
            }
        };
        if !(cpu.is_finite() && memory.is_finite() && cpu >= 0.0 && memory >= 0.0) {
            return Err("prices must be numbers of 0 or more".into());
        }
        Ok((cpu, memory))
    }
}

impl CostConfig {
    /// Every price readable: checked when the configuration is loaded.
    pub fn validate(&self) -> Result<(), String> {
        for (arch, price) in &self.prices {
            price
                .rates()
                .map_err(|e| format!("cost.prices.{arch}: {e}"))?;
        }
        Ok(())
    }

    /// The monthly cost of `requests` on `arch`.
    pub fn monthly(&self, arch: &str, requests: Requests) -> Result<f64, MissingPrice> {
        let price = self
            .prices
            .get(arch)
            .ok_or_else(|| MissingPrice(arch.to_string()))?;
        // Validated at load.
        let (cpu, memory) = price.rates().unwrap_or_default();
        Ok(HOURS_PER_MONTH * (requests.cpu_cores * cpu + requests.memory_gib * memory))
    }
}

/// No price is configured for an architecture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("no price for {0}")]
pub struct MissingPrice(pub String);

/// Requested resources, summed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Requests {
    pub cpu_cores: f64,
    pub memory_gib: f64,
}

impl std::ops::Add for Requests {
    type Output = Requests;
    fn add(self, other: Requests) -> Requests {
        Requests {
            cpu_cores: self.cpu_cores + other.cpu_cores,
            memory_gib: self.memory_gib + other.memory_gib,
        }
    }
}

/// One workload's requests, where its pods run now, and whether it can
/// move to the target.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadCost<'a> {
    pub name: &'a str,
    /// Requests of its running pods, per architecture of their node.
    pub running: BTreeMap<String, Requests>,
    /// Its images all publish the target architecture.
    pub movable: bool,
}

/// The monthly cost of a set of workloads three ways.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Savings {
    /// Requests per architecture now.
    pub requests: BTreeMap<String, Requests>,
    #[serde(serialize_with = "priced")]
    pub now: Result<f64, MissingPrice>,
    /// Everything on `baseline` (amd64): what the cluster cost before.
    #[serde(serialize_with = "priced")]
    pub all_on_baseline: Result<f64, MissingPrice>,
    /// Every movable workload on the target, the rest where they run.
    #[serde(serialize_with = "priced")]
    pub all_movable_on_target: Result<f64, MissingPrice>,
    /// Workloads that cannot move, and what they run on now would cost on
    /// the target if they could (their images block the saving).
    pub blocked: Vec<String>,
}

/// A figure as `{"monthly": 12.5, "missing": null}`, or without a price
/// `{"monthly": null, "missing": "no price for arm64"}`: never a zero.
fn priced<S: serde::Serializer>(
    figure: &Result<f64, MissingPrice>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut out = serializer.serialize_struct("Priced", 2)?;
    out.serialize_field("monthly", &figure.as_ref().ok())?;
    out.serialize_field("missing", &figure.as_ref().err().map(ToString::to_string))?;
    out.end()
}

/// Prices `workloads` now, all on `baseline`, and with every movable one
/// on `target`.
pub fn savings(
    config: &CostConfig,
    workloads: &[WorkloadCost<'_>],
    target: &str,
    baseline: &str,
) -> Savings {
    let mut requests: BTreeMap<String, Requests> = BTreeMap::new();
    let mut total = Requests::default();
    let mut moved: BTreeMap<String, Requests> = BTreeMap::new();
    let mut blocked = Vec::new();
    for workload in workloads {
        for (arch, r) in &workload.running {
            *requests.entry(arch.clone()).or_default() =
                requests.get(arch).copied().unwrap_or_default() + *r;
            total = total + *r;
            let side = if workload.movable { target } else { arch };
            *moved.entry(side.to_string()).or_default() =
                moved.get(side).copied().unwrap_or_default() + *r;
        }
        if !workload.movable {
            blocked.push(workload.name.to_string());
        }
    }
    // From +0.0: f64's `sum` of nothing is -0.0, which reads "-0.00".
    let sum = |per_arch: &BTreeMap<String, Requests>| -> Result<f64, MissingPrice> {
        (per_arch.iter()).try_fold(
            0.0,
            |total, (arch, r)| Ok(total + config.monthly(arch, *r)?),
        )
    };
    Savings {
        now: sum(&requests),
        all_on_baseline: config.monthly(baseline, total),
        all_movable_on_target: sum(&moved),
        requests,
        blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CostConfig {
        serde_yaml::from_str(
            "currency: USD\nprices:\n  amd64: {vcpuHour: 0.048, gibHour: 0.006}\n  arm64: {nodeType: Standard_D4pds_v5, nodeHour: 0.1808, vcpus: 4, memoryGiB: 16, cpuShare: 0.8}\n",
        )
        .unwrap()
    }

    fn r(cpu: f64, memory: f64) -> Requests {
        Requests {
            cpu_cores: cpu,
            memory_gib: memory,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn prices_per_resource_or_per_node() {
        let c = config();
        assert_eq!(c.prices["amd64"].rates().unwrap(), (0.048, 0.006));
        let (cpu, memory) = c.prices["arm64"].rates().unwrap();
        assert!(close(cpu, 0.1808 * 0.8 / 4.0) && close(memory, 0.1808 * 0.2 / 16.0));
        // 2 vCPU and 4 GiB for a month on amd64.
        assert!(close(
            c.monthly("amd64", r(2.0, 4.0)).unwrap(),
            730.5 * (0.096 + 0.024)
        ));
        assert_eq!(
            c.monthly("riscv64", r(1.0, 1.0)),
            Err(MissingPrice("riscv64".into()))
        );
        assert_eq!(
            MissingPrice("arm64".into()).to_string(),
            "no price for arm64"
        );
        let bad: CostConfig =
            serde_yaml::from_str("prices: {arm64: {nodeHour: 1, vcpus: 0, memoryGiB: 4}}").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("cost.prices.arm64: a node price needs")
        );
        let negative: CostConfig =
            serde_yaml::from_str("prices: {arm64: {vcpuHour: -1, gibHour: 0}}").unwrap();
        assert!(negative.validate().is_err());
    }

    #[test]
    fn nothing_running_costs_a_plain_zero() {
        let s = savings(&CostConfig::default(), &[], "arm64", "amd64");
        for figure in [&s.now, &s.all_movable_on_target] {
            let amount = figure.clone().unwrap();
            assert!(amount == 0.0 && amount.is_sign_positive(), "{amount:?}");
        }
        assert_eq!(
            s.all_on_baseline.unwrap_err().to_string(),
            "no price for amd64"
        );
    }

    #[test]
    fn savings_now_all_on_amd64_and_at_a_hundred_percent() {
        let c = config();
        let workloads = [
            WorkloadCost {
                name: "shop/Deployment/web",
                running: BTreeMap::from([
                    ("amd64".into(), r(2.0, 4.0)),
                    ("arm64".into(), r(2.0, 4.0)),
                ]),
                movable: true,
            },
            WorkloadCost {
                name: "shop/Deployment/billing",
                running: BTreeMap::from([("amd64".into(), r(1.0, 2.0))]),
                movable: false,
            },
        ];
        let s = savings(&c, &workloads, "arm64", "amd64");
        let on = |arch: &str, req| c.monthly(arch, req).unwrap();
        assert!(close(
            s.now.clone().unwrap(),
            on("amd64", r(3.0, 6.0)) + on("arm64", r(2.0, 4.0))
        ));
        assert!(close(
            s.all_on_baseline.clone().unwrap(),
            on("amd64", r(5.0, 10.0))
        ));
        assert!(close(
            s.all_movable_on_target.clone().unwrap(),
            on("arm64", r(4.0, 8.0)) + on("amd64", r(1.0, 2.0))
        ));
        assert_eq!(s.blocked, ["shop/Deployment/billing"]);
        assert_eq!(s.requests["amd64"], r(3.0, 6.0));
        // Without an arm64 price, what needs it says so; the baseline
        // stands.
        let mut no_arm = c.clone();
        no_arm.prices.remove("arm64");
        let s = savings(&no_arm, &workloads, "arm64", "amd64");
        assert_eq!(s.now, Err(MissingPrice("arm64".into())));
        assert_eq!(s.all_movable_on_target, Err(MissingPrice("arm64".into())));
        assert!(s.all_on_baseline.is_ok());
    }
}
