//! One leader among archway's replicas, through one coordination.k8s.io/v1
//! Lease: acquired and renewed with the Lease's resourceVersion (so two
//! replicas never both win a round), taken over when its holder has stopped
//! renewing for `leaseDuration`. Everything that writes to the cluster for
//! archway as a whole (the gate controller, the guard's holds and Events,
//! the shared facts) runs only in the leader; every replica keeps its
//! watches warm. The election reaches them as [`Leadership`], a pair of
//! watch channels.
//!
//! Expiry is judged as client-go's leader election judges it: by how long
//! this replica has seen the Lease unchanged, on its own monotonic clock,
//! never by comparing the holder's `renewTime` with this machine's wall
//! clock (the two machines' clocks may disagree by more than a lease).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the election tells the rest of a replica.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// This replica holds the Lease: it runs what writes.
    pub leading: watch::Receiver<bool>,
    /// Some replica (this one or another) holds the Lease and renews it,
    /// as far as this one can see: the webhook may gate pods, since a
    /// controller runs to release them.
    pub some_leader: watch::Receiver<bool>,
    /// Where another replica that leads can be asked what it knows
    /// (`lookup::peer`), as it wrote on the Lease: `None` while this
    /// replica leads, nobody does, or the leader gave no address.
    pub leader_address: watch::Receiver<Option<String>>,
}

/// The election's side of [`Leadership`].
pub struct LeadershipSender {
    leading: watch::Sender<bool>,
    some_leader: watch::Sender<bool>,
    leader_address: watch::Sender<Option<String>>,
}

impl Leadership {
    /// A new pair: nobody leads until the election says so.
    pub fn channel() -> (LeadershipSender, Leadership) {
        let (leading_tx, leading) = watch::channel(false);
        let (some_tx, some_leader) = watch::channel(false);
        let (address_tx, leader_address) = watch::channel(None);
        let sender = LeadershipSender {
            leading: leading_tx,
            some_leader: some_tx,
            leader_address: address_tx,
        };
        (
            sender,
            Leadership {
                leading,
                some_leader,
                leader_address,
            },
        )
    }
}

/// Which Lease, who this replica is, and how long a holder keeps it.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// Where the other replicas reach this one (`host:port` of its webhook
    /// listener), written on the Lease while it leads.
    pub peer_address: Option<String>,
}

/// The Lease annotation holding the leader's peer address.
pub const PEER_ADDRESS_ANNOTATION: &str = "archway.dev/peer-address";

/// The longest peer address believed: a `host:port` is far shorter.
const MAX_PEER_ADDRESS: usize = 300;

/// The peer address `lease` names, if it is a `host:port` archway could
/// have written (the Lease is archway's, but its content is still input).
fn peer_address_of(lease: &Lease) -> Option<String> {
    let address = lease
        .metadata
        .annotations
        .as_ref()?
        .get(PEER_ADDRESS_ANNOTATION)?;
    let well_formed = !address.is_empty()
        && address.len() <= MAX_PEER_ADDRESS
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0)
        })
        && address
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    well_formed.then(|| address.clone())
}

/// The namespace archway runs in (its ServiceAccount's), else `archway`.
pub fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "archway".into())
}

/// This replica's name as a holder: its pod's name (the hostname in a pod),
/// so a restarted container takes its own Lease back at once, while a new
/// pod waits for the old one's to expire. Outside a pod, the machine's
/// hostname: a restarted `archway serve` there takes its Lease back too.
pub fn own_identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(128).collect())
        .unwrap_or_else(|| format!("archway-{}", std::process::id()))
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The holder and renewal last seen, and when this replica saw them.
    observed: Option<((String, Option<MicroTime>), Instant)>,
    /// After the last round: another replica holds the Lease and renews it.
    other_holds: bool,
    /// After the last round: the peer address of the other replica that
    /// holds it.
    other_address: Option<String>,
}

impl Elector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            other_holds: false,
            other_address: None,
        }
    }

    /// One round: `true` when this replica holds the Lease after it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    annotations: self.peer_annotations(),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_duration_seconds: Some(seconds),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another replica created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), spec.renew_time.clone());
        let seen_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.observed = Some((record, Instant::now()));
                Instant::now()
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.duration, Duration::from_secs);
        let ours = holder == self.settings.identity;
        let expired = holder.is_empty() || seen_at.elapsed() >= held_for;
        self.other_holds = !ours && !expired;
        if self.other_holds {
            self.other_address = peer_address_of(&lease);
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.holder_identity = Some(self.settings.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        let annotations = lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match &self.settings.peer_address {
            Some(address) => {
                annotations.insert(PEER_ADDRESS_ANNOTATION.into(), address.clone());
            }
            None => {
                annotations.remove(PEER_ADDRESS_ANNOTATION);
            }
        }
        // `lease` carries the resourceVersion read above: if another replica
        // wrote in between, this update is refused with 409.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn peer_annotations(&self) -> Option<std::collections::BTreeMap<String, String>> {
        let address = self.settings.peer_address.clone()?;
        Some([(PEER_ADDRESS_ANNOTATION.to_string(), address)].into())
    }

    /// Gives the Lease up (at shutdown), so another replica takes over
    /// without waiting for it to expire.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        if let Some(annotations) = lease.metadata.annotations.as_mut() {
            annotations.remove(PEER_ADDRESS_ANNOTATION);
        }
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Runs the election until `stop` is cancelled, telling `leadership`
    /// whether this replica holds the Lease. A holder that cannot renew
    /// steps down after two thirds of the lease, before any other replica
    /// may take over. On the stop, it steps down and gives the Lease up,
    /// so another replica takes over at once.
    pub async fn run(mut self, leadership: LeadershipSender, stop: CancellationToken) {
        let LeadershipSender {
            leading,
            some_leader,
            leader_address,
        } = leadership;
        let retry = self.settings.duration / 3;
        let step_down_after = self.settings.duration * 2 / 3;
        let mut renewed: Option<Instant> = None;
        let mut live_at: Option<Instant> = None;
        loop {
            self.other_holds = false;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Some(Instant::now()),
                Ok(false) => renewed = None,
                Err(error) => {
                    tracing::warn!(%error, lease = %self.settings.name, "could not renew or acquire the leader Lease");
                }
            }
            let holds = renewed.is_some_and(|at| at.elapsed() < step_down_after);
            if holds || self.other_holds {
                live_at = Some(Instant::now());
            }
            // Some replica leads (this one or another, as far as this one
            // can see): its gate controller runs, so the webhook may gate.
            some_leader
                .send_replace(live_at.is_some_and(|at| at.elapsed() < self.settings.duration));
            // Only a leader seen renewing this round is asked (the round
            // sets the address only then): one that stopped is not waited
            // for.
            let address = self.other_address.take();
            leader_address.send_if_modified(|was| {
                let changed = *was != address;
                *was = address;
                changed
            });
            leading.send_if_modified(|was| {
                let changed = *was != holds;
                if changed {
                    tracing::info!(
                        lease = %self.settings.name,
                        identity = %self.settings.identity,
                        leading = holds,
                        "leader Lease"
                    );
                }
                *was = holds;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.cancelled() => break,
            }
        }
        leading.send_replace(false);
        some_leader.send_replace(false);
        leader_address.send_replace(None);
        if renewed.is_some()
            && let Err(error) = tokio::time::timeout(Duration::from_secs(2), self.release())
                .await
                .unwrap_or(Ok(()))
        {
            tracing::warn!(%error, "could not release the leader Lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_with(address: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                annotations: Some(
                    [(PEER_ADDRESS_ANNOTATION.to_string(), address.to_string())].into(),
                ),
                ..Default::default()
            },
            spec: None,
        }
    }

    #[test]
    fn only_a_host_and_port_is_taken_as_the_leader_s_address() {
        for good in ["10.0.0.5:8443", "[fd00::5]:8443", "archway-0.archway:8443"] {
            assert_eq!(peer_address_of(&lease_with(good)).as_deref(), Some(good));
        }
        let long = format!("{}:8443", "a".repeat(MAX_PEER_ADDRESS));
        for bad in [
            "",
            "10.0.0.5",
            "10.0.0.5:0",
            "10.0.0.5:99999",
            ":8443",
            "evil.example/path:8443",
            "user@10.0.0.5:8443",
            "10.0.0.5:8443 ",
            long.as_str(),
        ] {
            assert_eq!(peer_address_of(&lease_with(bad)), None, "{bad:?}");
        }
        assert_eq!(peer_address_of(&Lease::default()), None);
    }
}
