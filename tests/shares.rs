//! How exact a spread rollout's share is when two archway replicas place a
//! workload's pods (issue 25 item 3). Pure: no cluster, no webhook.
//!
//! `cargo test --test shares -- --nocapture` prints the figures: 20
//! Deployments of 10 pods at rollout 10, 30 and 50%, each pod reviewed by
//! replica A or B at random (seeded), each replica counting its own pods.
//! The deviation is |steered − n·N/100| over every prefix of n pods of a
//! Deployment (n = 1..=10), the worst over 1,000 seeded trials.

use archway::decision::placement::{rollout_bucket, spread_steered};

/// SplitMix64: a seeded, reproducible coin.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn coin(&mut self) -> u64 {
        self.next() >> 63
    }
}

#[derive(Clone, Copy, Debug)]
enum Scheme {
    /// Before issue 25: the owner's bucket plus 61 per place, below N.
    StepsOf61,
    /// Places around the owner's phase, both replicas going forward.
    SameWay,
    /// Both replicas, opposite ways.
    OppositeWays,
    /// Each replica takes a way per owner at random (as `RolloutDraws`).
    RandomWays,
}

/// Whether replica `r`'s `k`-th pod of `owner` is steered; `ways` are the
/// two replicas' directions for this owner (0 forward, 1 backward).
fn steered(scheme: Scheme, owner: &str, k: u64, ways: [u64; 2], r: usize, n: u8) -> bool {
    match scheme {
        Scheme::StepsOf61 => {
            (u64::from(rollout_bucket(owner)) + (k % 100) * 61) % 100 < u64::from(n)
        }
        _ => spread_steered(owner, 2 * k + ways[r], n),
    }
}

/// The worst deviation over the trials, in hundredths of a pod, and the
/// share of Deployments whose 10 pods are not exactly their share.
fn measure(scheme: Scheme, rollout: u8, replicas: usize, trials: u64) -> (u64, f64) {
    let mut worst = 0;
    let mut off = 0u64;
    for trial in 0..trials {
        let mut rng = Rng(trial * 1_000_003 + u64::from(rollout));
        for d in 0..20 {
            let owner = format!("shop-{trial}/Deployment/web-{d}");
            let ways = match scheme {
                Scheme::StepsOf61 | Scheme::SameWay => [0, 0],
                Scheme::OppositeWays => [0, 1],
                Scheme::RandomWays => [rng.coin(), rng.coin()],
            };
            let mut taken = [0u64; 2];
            let mut count = 0u64;
            for n in 1..=10u64 {
                let r = if replicas == 1 {
                    0
                } else {
                    rng.coin() as usize
                };
                count += u64::from(steered(scheme, &owner, taken[r], ways, r, rollout));
                taken[r] += 1;
                worst = worst.max((count * 100).abs_diff(n * u64::from(rollout)));
            }
            off += u64::from(count * 100 != 10 * u64::from(rollout));
        }
    }
    (worst, off as f64 / (trials * 20) as f64)
}

#[test]
fn two_replicas_share_figures() {
    let trials = 1000;
    println!(
        "scheme        replicas rollout  worst |steered - n*N/100|  Deployments off at 10 pods"
    );
    let mut rows = Vec::new();
    for scheme in [
        Scheme::StepsOf61,
        Scheme::SameWay,
        Scheme::OppositeWays,
        Scheme::RandomWays,
    ] {
        for replicas in [1, 2] {
            for rollout in [10u8, 30, 50] {
                let (worst, off) = measure(scheme, rollout, replicas, trials);
                println!(
                    "{:<13} {replicas:>8} {rollout:>6}%  {:>25.2}  {:>25.1}%",
                    format!("{scheme:?}"),
                    worst as f64 / 100.0,
                    off * 100.0
                );
                rows.push((scheme, replicas, worst));
            }
        }
    }
    for (scheme, replicas, worst) in rows {
        match (scheme, replicas) {
            // One replica, or two going opposite ways: within a pod.
            (Scheme::SameWay | Scheme::RandomWays, 1) | (Scheme::OppositeWays, _) => {
                assert!(worst < 100, "{scheme:?} {replicas}: {worst}")
            }
            // Two replicas otherwise: within a pod each, two in all.
            (Scheme::SameWay | Scheme::RandomWays, 2) => {
                assert!(worst < 200, "{scheme:?} {replicas}: {worst}")
            }
            (Scheme::StepsOf61, _) => assert!(worst >= 100, "{scheme:?} {replicas}: {worst}"),
            _ => unreachable!(),
        }
    }
}
