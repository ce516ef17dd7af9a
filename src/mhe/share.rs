//! The one message type of every protocol, its shapes, and aggregation.

use std::sync::Arc;

use crate::backend::{PolyBatch, Repr};
use crate::error::{Error, Result};
use crate::rlwe::RlweContext;

/// Which protocol (and round, Galois element or run) a share belongs to. A party answers each
/// at most once; shares of different protocols never aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Collective public key generation.
    Ckg,
    /// Relinearization key generation, round 1.
    RkgRound1,
    /// Relinearization key generation, round 2.
    RkgRound2,
    /// Galois key generation for element `galois`.
    Rtg {
        /// The Galois element (odd, below 2N).
        galois: usize,
    },
    /// Collective key switching (decryption when the target key is 0), run `run`.
    Cks {
        /// Caller-chosen run identifier (≤ [`super::MAX_RUN`]).
        run: u64,
    },
    /// Public-key switching (re-encryption to a receiver's public key), run `run`.
    Pcks {
        /// Caller-chosen run identifier (≤ [`super::MAX_RUN`]).
        run: u64,
    },
    /// Collective refresh, run `run` (also selects the common random polynomial).
    Refresh {
        /// Caller-chosen run identifier (≤ [`super::MAX_RUN`]).
        run: u64,
    },
}

impl Protocol {
    /// Wire tag and index.
    pub(crate) fn to_wire(self) -> (u8, u64) {
        match self {
            Self::Ckg => (1, 0),
            Self::RkgRound1 => (2, 0),
            Self::RkgRound2 => (3, 0),
            Self::Rtg { galois } => (4, galois as u64),
            Self::Cks { run } => (5, run),
            Self::Pcks { run } => (6, run),
            Self::Refresh { run } => (7, run),
        }
    }

    /// From the wire, validated against the ring degree (Galois elements odd and below 2N,
    /// runs ≤ [`super::MAX_RUN`], index 0 for the key generations).
    pub(crate) fn from_wire(tag: u8, index: u64, n: usize) -> Result<Self> {
        let p = match tag {
            1 => Self::Ckg,
            2 => Self::RkgRound1,
            3 => Self::RkgRound2,
            4 => Self::Rtg {
                galois: index as usize,
            },
            5 => Self::Cks { run: index },
            6 => Self::Pcks { run: index },
            7 => Self::Refresh { run: index },
            t => return Err(Error::Decode(format!("unknown multiparty protocol {t}"))),
        };
        p.validate(n).map_err(|e| Error::Decode(e.to_string()))?;
        if matches!(p, Self::Ckg | Self::RkgRound1 | Self::RkgRound2) && index != 0 {
            return Err(Error::Decode(format!("{p:?} share with index {index}")));
        }
        Ok(p)
    }

    pub(crate) fn validate(self, n: usize) -> Result<()> {
        match self {
            Self::Rtg { galois } if galois % 2 == 0 || galois >= 2 * n || galois == 1 => Err(
                Error::Multiparty(format!("Galois element {galois} is not odd in 3..2N")),
            ),
            Self::Cks { run } | Self::Pcks { run } | Self::Refresh { run }
                if run > super::MAX_RUN =>
            {
                Err(Error::Multiparty(format!(
                    "run id {run} above {}",
                    super::MAX_RUN
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether the share lives at a ciphertext's level (the key generations are at the top).
    pub(crate) fn has_level(self) -> bool {
        matches!(
            self,
            Self::Cks { .. } | Self::Pcks { .. } | Self::Refresh { .. }
        )
    }
}

/// One party's message in one protocol run, or the sum of several ([`aggregate`]): NTT-domain
/// polynomials whose number and limbs the protocol and level fix (`shape`). Serializable
/// (`serialize::to_bytes`, kind `MheShare`); contains no secret in the clear.
#[derive(Clone, Debug)]
pub struct Share {
    pub(crate) protocol: Protocol,
    /// The ciphertext's level (CKS, PCKS, refresh); the top level for key generation.
    pub(crate) level: usize,
    pub(crate) parts: Vec<PolyBatch>,
    pub(crate) fingerprint: u64,
    /// The collective key set.
    pub(crate) key_id: u64,
}

impl Share {
    /// The protocol run the share answers.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The level it was made at.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The collective key set.
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    /// Checks that the share answers `want` at `level` under `ctx` and key set `key_id`, with
    /// the parts its shape needs: what every finalizer runs first.
    pub(crate) fn expect(
        &self,
        ctx: &RlweContext,
        want: Protocol,
        level: usize,
        key_id: u64,
    ) -> Result<()> {
        ctx.check_fingerprint(self.fingerprint, "share")?;
        if self.protocol != want || self.level != level {
            return Err(Error::Multiparty(format!(
                "expected a share for {want:?} at level {level}, got one for {:?} at level {}",
                self.protocol, self.level
            )));
        }
        crate::rlwe::ciphertext::check_key_id(key_id, self.key_id, "share")?;
        check_shape(ctx, self)
    }
}

/// The parts a share of `protocol` at `level` has: `(limbs, polynomials)` each.
pub(crate) fn shape(
    ctx: &RlweContext,
    protocol: Protocol,
    level: usize,
) -> Result<Vec<(Arc<[usize]>, usize)>> {
    protocol.validate(ctx.n())?;
    let top = ctx.max_level();
    if level > top || (!protocol.has_level() && level != top) {
        return Err(Error::Multiparty(format!(
            "{protocol:?} share at level {level} (top {top})"
        )));
    }
    let qp = ctx.qp_limbs(top);
    let digits = ctx.digits().len();
    Ok(match protocol {
        Protocol::Ckg => vec![(qp, 1)],
        Protocol::RkgRound1 => vec![(qp, 2); digits],
        Protocol::RkgRound2 | Protocol::Rtg { .. } => vec![(qp, 1); digits],
        Protocol::Cks { .. } => vec![(ctx.q_limbs(level), 1)],
        Protocol::Pcks { .. } => vec![(ctx.q_limbs(level), 2)],
        Protocol::Refresh { .. } => vec![(ctx.q_limbs(level), 1), (ctx.q_limbs(top), 1)],
    })
}

fn check_shape(ctx: &RlweContext, s: &Share) -> Result<()> {
    let want = shape(ctx, s.protocol, s.level)?;
    let ok = want.len() == s.parts.len()
        && want.iter().zip(&s.parts).all(|((limbs, count), p)| {
            *p.limbs() == **limbs && p.count() == *count && p.repr() == Repr::Ntt
        });
    if !ok {
        return Err(Error::Multiparty(format!(
            "malformed {:?} share (wrong number of polynomials or primes)",
            s.protocol
        )));
    }
    Ok(())
}

/// Adds the shares of one protocol run (any number, e.g. a tree of partial sums): all must
/// answer the same protocol, run and level, in the same key set and parameters.
pub fn aggregate(ctx: &RlweContext, shares: &[Share]) -> Result<Share> {
    let first = shares
        .first()
        .ok_or_else(|| Error::Multiparty("no shares to aggregate".into()))?;
    let be = ctx.backend();
    let mut acc = first.clone();
    check_shape(ctx, first)?;
    for s in &shares[1..] {
        s.expect(ctx, first.protocol, first.level, first.key_id)?;
        for (a, p) in acc.parts.iter_mut().zip(&s.parts) {
            be.add_assign(ctx.ring(), a, p)?;
        }
    }
    ctx.check_fingerprint(first.fingerprint, "share")?;
    Ok(acc)
}
