//! Seeded client programs: what each simulated client does, in order, and
//! which store fault it injects before each step. The same seed gives the
//! same programs and the same fault plan; the interleaving is the
//! scheduler's (a replay reruns the same programs, not the same timing).

use std::time::Duration;

use offstate_core::testing::{Call, Fault};

use super::model::OpKind;

/// A small seeded random source (SplitMix64): deterministic, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A source seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One of `weighted`, by weight.
    pub fn pick<T: Copy>(&mut self, weighted: &[(u32, T)]) -> T {
        let total: u32 = weighted.iter().map(|(w, _)| w).sum();
        let mut at = self.below(u64::from(total)) as u32;
        for (weight, item) in weighted {
            if at < *weight {
                return *item;
            }
            at -= weight;
        }
        weighted[weighted.len() - 1].1
    }

    /// A seed for a sub-stream, mixed from this one's seed and `salt`.
    #[must_use]
    pub fn derive(seed: u64, salt: u64) -> u64 {
        Self::new(seed ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
    }
}

/// One request of a client, on one app instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What it does.
    pub kind: OpKind,
    /// Which app instance serves it.
    pub instance: usize,
    /// For a login: also add an item in the same request.
    pub with_add: bool,
}

/// One step of a client program.
#[derive(Debug, Clone)]
pub struct Step {
    /// The requests the client sends at once (one, or two racing on the
    /// same cookie, as a browser with two tabs does).
    pub requests: Vec<Request>,
    /// A store fault to queue before the step.
    pub fault: Option<(Call, Fault)>,
    /// For a snoop: which ID of those handed out so far it replays.
    pub pick: u64,
}

/// What a program looks like: how many instances there are, how often
/// faults are injected.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// App instances to spread requests over.
    pub instances: usize,
    /// Chance that a step is preceded by an injected store fault.
    pub fault_rate: f64,
}

const KINDS: &[(u32, OpKind)] = &[
    (30, OpKind::Add),
    (10, OpKind::Login),
    (6, OpKind::Logout),
    (3, OpKind::RevokeAll),
    (10, OpKind::Touch),
    (12, OpKind::Read),
    (12, OpKind::Snoop),
];

/// What the racing second request of a step is.
const RACERS: &[(u32, OpKind)] = &[
    (5, OpKind::Add),
    (4, OpKind::Login),
    (2, OpKind::Logout),
    (1, OpKind::RevokeAll),
    (1, OpKind::Touch),
];

const CALLS: &[(u32, Call)] = &[
    (3, Call::Load),
    (3, Call::Create),
    (4, Call::Save),
    (2, Call::Touch),
    (2, Call::Delete),
    (4, Call::DeleteIfVersion),
    (1, Call::RevokePrincipal),
];

#[derive(Debug, Clone, Copy)]
enum FaultKind {
    TimeoutBefore,
    TimeoutAfter,
    Unavailable,
    Delay,
}

const FAULTS: &[(u32, FaultKind)] = &[
    (3, FaultKind::TimeoutBefore),
    (4, FaultKind::TimeoutAfter),
    (1, FaultKind::Unavailable),
    (2, FaultKind::Delay),
];

/// A seeded fault for one store call.
pub fn fault(rng: &mut Rng) -> (Call, Fault) {
    let call = rng.pick(CALLS);
    let fault = match rng.pick(FAULTS) {
        FaultKind::TimeoutBefore => Fault::TimeoutBefore,
        FaultKind::TimeoutAfter => Fault::TimeoutAfter,
        FaultKind::Unavailable => Fault::Unavailable,
        FaultKind::Delay => Fault::Delay(Duration::from_millis(1 + rng.below(40))),
    };
    (call, fault)
}

fn request(rng: &mut Rng, kind: OpKind, shape: Shape) -> Request {
    Request {
        kind,
        instance: rng.below(shape.instances as u64) as usize,
        with_add: kind == OpKind::Login && rng.chance(0.5),
    }
}

/// The program of one client: `steps` seeded steps.
#[must_use]
pub fn program(seed: u64, steps: usize, shape: Shape) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    (0..steps)
        .map(|_| {
            let first = rng.pick(KINDS);
            let mut requests = vec![request(&mut rng, first, shape)];
            if first != OpKind::Snoop && first != OpKind::Read && rng.chance(0.12) {
                let second = rng.pick(RACERS);
                requests.push(request(&mut rng, second, shape));
            }
            let fault = rng.chance(shape.fault_rate).then(|| fault(&mut rng));
            Step {
                requests,
                fault,
                pick: rng.next_u64(),
            }
        })
        .collect()
}
