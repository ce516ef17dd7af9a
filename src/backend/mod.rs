//! Backends: where RNS polynomial batches live and how they are computed on.
//!
//! A [`PolyBatch`] is `count` polynomials over the same limbs, stored limb-major
//! (`[poly][limb][coefficient]`) in a device buffer. The schemes only ever talk to the
//! [`Backend`] trait, so the CPU (always built), CUDA and wgpu backends are interchangeable; all
//! arithmetic is deterministic integer math, so every backend must return identical words.
//! Operations work on whole batches (a ciphertext is one batch of 2 or 3 polynomials, a tensor
//! can be one batch of many) so that a GPU pays its launch overhead once per batch.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod trace;
#[cfg(feature = "wgpu")]
pub mod wgpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) use trace::Trace;

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::math::{BaseConverter, RingContext, ScaleRounder};

pub use cpu::CpuBackend;

/// Whether coefficients or NTT evaluations (bit-reversed order) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Repr {
    /// Coefficients of `X^0..X^{N-1}`.
    Coeff,
    /// Negacyclic NTT evaluations, bit-reversed order.
    Ntt,
}

/// Device memory holding the words of a batch.
#[derive(Debug)]
#[non_exhaustive]
pub enum Buffer {
    /// Host memory (CPU backend).
    Host(Vec<u32>),
    /// Memory owned by a device backend (CUDA, wgpu); the backend downcasts it to its own type.
    Device(Box<dyn DeviceBuffer>),
}

impl Clone for Buffer {
    fn clone(&self) -> Self {
        match self {
            Buffer::Host(v) => Buffer::Host(v.clone()),
            Buffer::Device(d) => Buffer::Device(d.clone_buffer()),
        }
    }
}

impl Buffer {
    /// Overwrites the words with zeros (secret keys on drop). The length is kept (the batch
    /// stays a valid all-zero one, as after a device clear); `Vec::zeroize` also wipes the spare
    /// capacity, and the refill stays within it, so nothing is reallocated.
    pub(crate) fn wipe(&mut self) {
        match self {
            Buffer::Host(v) => {
                let len = v.len();
                zeroize::Zeroize::zeroize(v);
                v.resize(len, 0);
            }
            Buffer::Device(d) => d.wipe(),
        }
    }
}

/// A device allocation behind [`Buffer::Device`]. Each device backend implements it for its
/// own buffer type, so the `Buffer` enum does not depend on which GPU features are built.
pub trait DeviceBuffer: Send + Sync + Debug + std::any::Any {
    /// A deep copy on the same device (`PolyBatch` has value semantics on every backend).
    fn clone_buffer(&self) -> Box<dyn DeviceBuffer>;
    /// Overwrites the allocation with zeros (used for secret keys before they are freed).
    fn wipe(&mut self);
    /// For downcasting to the backend's concrete type.
    fn as_any(&self) -> &dyn std::any::Any;
    /// For downcasting to the backend's concrete type.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Overwrites the batch's words with zeros where they live (host memory on the CPU backend, a
/// device clear on CUDA and wgpu), so that `Zeroizing<PolyBatch>` wipes a temporary copy of a
/// secret before its memory goes back to the allocator (or a GPU buffer pool).
impl zeroize::Zeroize for PolyBatch {
    fn zeroize(&mut self) {
        self.buf.wipe();
    }
}

/// A batch of RNS polynomials resident on one backend.
#[derive(Clone, Debug)]
pub struct PolyBatch {
    pub(crate) buf: Buffer,
    limbs: Arc<[usize]>,
    count: usize,
    n: usize,
    repr: Repr,
}

impl PolyBatch {
    /// Wraps a buffer (backends only).
    pub(crate) fn from_parts(
        buf: Buffer,
        limbs: Arc<[usize]>,
        count: usize,
        n: usize,
        repr: Repr,
    ) -> Self {
        Self {
            buf,
            limbs,
            count,
            n,
            repr,
        }
    }

    /// The words (limb-major) where they already live in host memory (the CPU backend), so
    /// that readers such as the serializer borrow them instead of downloading a copy.
    pub(crate) fn host_words(&self) -> Option<&[u32]> {
        match &self.buf {
            Buffer::Host(v) => Some(v),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Indices (into the ring's prime table) of the limbs.
    pub fn limbs(&self) -> &[usize] {
        &self.limbs
    }

    /// Shared handle on the limb indices.
    pub fn limbs_arc(&self) -> Arc<[usize]> {
        self.limbs.clone()
    }

    /// Number of polynomials.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Ring degree.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Representation.
    pub fn repr(&self) -> Repr {
        self.repr
    }

    pub(crate) fn set_repr(&mut self, r: Repr) {
        self.repr = r;
    }

    /// Words per polynomial.
    pub fn poly_words(&self) -> usize {
        self.limbs.len() * self.n
    }

    /// Checks that `other` can be combined element-wise with `self` (same limbs and repr, and
    /// same count or a broadcast single polynomial).
    pub fn check_compatible(&self, other: &PolyBatch, op: &'static str) -> Result<()> {
        if self.limbs != other.limbs || self.n != other.n {
            return Err(Error::ParameterMismatch(format!(
                "{op}: operands live on different limbs/levels ({} vs {} limbs)",
                self.limbs.len(),
                other.limbs.len()
            )));
        }
        if self.repr != other.repr {
            return Err(Error::InvalidInput(format!(
                "{op}: operands in different representations ({:?} vs {:?})",
                self.repr, other.repr
            )));
        }
        if other.count != self.count && other.count != 1 {
            return Err(Error::Shape(format!(
                "{op}: batch of {} polynomials cannot combine with {}",
                self.count, other.count
            )));
        }
        Ok(())
    }
}

/// Operations every backend provides. All of them are exact modular integer arithmetic.
///
/// Element-wise binary operations accept a right operand of the same count or of count 1
/// (broadcast to every polynomial of the left operand).
pub trait Backend: Send + Sync + Debug {
    /// Short name (`cpu`, `cuda`, `wgpu`).
    fn name(&self) -> &'static str;

    /// Copies host words (limb-major) to the device.
    fn upload(
        &self,
        words: Vec<u32>,
        limbs: Arc<[usize]>,
        count: usize,
        n: usize,
        repr: Repr,
    ) -> Result<PolyBatch>;

    /// Copies a batch back to host words (limb-major).
    fn download(&self, p: &PolyBatch) -> Result<Vec<u32>>;

    /// A batch of zero polynomials.
    fn zeros(&self, limbs: Arc<[usize]>, count: usize, n: usize, repr: Repr) -> Result<PolyBatch>;

    /// Forward NTT of every polynomial (Coeff → Ntt).
    fn ntt_forward(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()>;

    /// Inverse NTT of every polynomial (Ntt → Coeff).
    fn ntt_inverse(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()>;

    /// `a += b`.
    fn add_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()>;

    /// `a + b` (`a − b` when `subtract`) as a new batch of `a`'s shape, `b` as for
    /// [`Self::add_assign`]. The default copies `a` and adds in place; the CPU writes the sum
    /// straight into a fresh buffer (one pass instead of a copy and a read-modify-write).
    fn add_new(
        &self,
        ring: &RingContext,
        a: &PolyBatch,
        b: &PolyBatch,
        subtract: bool,
    ) -> Result<PolyBatch> {
        let mut out = a.clone();
        if subtract {
            self.sub_assign(ring, &mut out, b)?;
        } else {
            self.add_assign(ring, &mut out, b)?;
        }
        Ok(out)
    }

    /// Decryption's ring work for a size-2 ciphertext: the phase `c_0 + c_1·s` in the
    /// coefficient domain, from `ct` (count 2, NTT domain) and the secret `s` (count 1, NTT
    /// domain, on a superset of `ct`'s limbs). The default selects `s`'s limbs into a copy
    /// that is wiped on drop, copies `c_0` and `c_1` out, accumulates and transforms; the CPU
    /// reads `c_0`, `c_1` and `s` in place and transforms each limb while it is in cache.
    fn decrypt_phase(
        &self,
        ring: &RingContext,
        ct: &PolyBatch,
        s: &PolyBatch,
    ) -> Result<PolyBatch> {
        check_phase(ct, s)?;
        let s = zeroize::Zeroizing::new(self.select_limbs(s, ct.limbs.clone())?);
        let mut acc = self.slice_polys(ct, 0, 1)?;
        let c1 = self.slice_polys(ct, 1, 1)?;
        self.mul_acc(ring, &mut acc, &c1, &s)?;
        self.ntt_inverse(ring, &mut acc)?;
        Ok(acc)
    }

    /// `a -= b`.
    fn sub_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()>;

    /// `a = -a`.
    fn neg_assign(&self, ring: &RingContext, a: &mut PolyBatch) -> Result<()>;

    /// `a *= b` element-wise (a negacyclic product when both are in the NTT domain).
    fn mul_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()>;

    /// `acc += a * b` element-wise; `a` and `b` may each broadcast.
    fn mul_acc(
        &self,
        ring: &RingContext,
        acc: &mut PolyBatch,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<()>;

    /// `a *= s[limb]`, one constant per limb (`s.len() == a.limbs().len()`).
    fn mul_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()>;

    /// `K` linear combinations `y_k = Σ_i w_{k,i} · x_i` of the same inputs (batches of one
    /// shape), with integer weights per output, input and limb
    /// (`weights[(k * inputs + i) * limbs + l]`, each `< q_l`). The workhorse of encrypted
    /// linear layers: every input is read once for all `K` outputs (a convolution's output
    /// channels share their inputs), and products accumulate without intermediate reductions.
    fn linear_combinations(
        &self,
        ring: &RingContext,
        inputs: &[&PolyBatch],
        weights: &[u32],
        outputs: usize,
    ) -> Result<Vec<PolyBatch>>;

    /// One linear combination (`weights[i * limbs + l]`); see [`Backend::linear_combinations`].
    fn linear_combination(
        &self,
        ring: &RingContext,
        inputs: &[&PolyBatch],
        weights: &[u32],
    ) -> Result<PolyBatch> {
        self.linear_combinations(ring, inputs, weights, 1)?
            .pop()
            .ok_or_else(|| Error::Backend("linear_combinations returned nothing".into()))
    }

    /// The tensor product of two size-2 ciphertext batches (NTT domain, same limbs):
    /// `(a0·b0, a0·b1 + a1·b0, a1·b1)`, in one pass.
    fn tensor_product(&self, ring: &RingContext, a: &PolyBatch, b: &PolyBatch)
        -> Result<PolyBatch>;

    /// `a += s[limb]` on every word (in the NTT domain: adds the constant polynomial `s`).
    fn add_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()>;

    /// Fast base conversion of Coeff-domain polynomials from `p`'s limbs to `to` limbs with
    /// `conv` (built for exactly those bases). `exact` gives the centered representative.
    fn base_convert(
        &self,
        ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        conv: &BaseConverter,
        exact: bool,
    ) -> Result<PolyBatch>;

    /// BFV's scale-and-round (Halevi-Polyakov-Shoup): Coeff-domain polynomials over
    /// `Q ∪ C` (the limbs of `p`, `Q` first, `C` = `to` last) become `round(t·x/Q)` over `to`,
    /// with the tables of `rounder` (built for exactly those bases). Exact integer arithmetic;
    /// see [`ScaleRounder`] for the formula every backend must reproduce word for word.
    fn scale_and_round(
        &self,
        ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        rounder: &ScaleRounder,
    ) -> Result<PolyBatch>;

    /// The Galois automorphism `X → X^g` (g odd) of Coeff-domain polynomials.
    fn automorphism(&self, ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch>;

    /// The Galois automorphism `X → X^g` (g odd) of NTT-domain polynomials: a permutation of
    /// the evaluations (`out[k] = in[j]` with `ψ^{e_j} = ψ^{g·e_k}`), no transform needed.
    fn automorphism_ntt(&self, ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch>;

    /// Copies the given limbs (a subset of `p`'s, by index into the ring) into a new batch.
    fn select_limbs(&self, p: &PolyBatch, limbs: Arc<[usize]>) -> Result<PolyBatch>;

    /// Copies polynomials `start..start+len` into a new batch.
    fn slice_polys(&self, p: &PolyBatch, start: usize, len: usize) -> Result<PolyBatch>;

    /// Concatenates batches over the same limbs into one.
    fn concat(&self, parts: &[&PolyBatch]) -> Result<PolyBatch>;

    /// Concatenates batches of the same count and polynomials along the limb axis
    /// (`[poly][limbs of a ++ limbs of b]`).
    fn concat_limbs(&self, a: &PolyBatch, b: &PolyBatch) -> Result<PolyBatch>;

    /// Divides by the product of the `drop` limbs and rounds (ModDown, CKKS rescaling, BFV
    /// modulus switching): NTT-domain `x` over `keep ∪ drop` becomes
    /// `[P^{-1}]·(x − NTT(conv(INTT(x_drop))))` over `keep`, with `P = Π drop` and `conv` the
    /// exact converter from `drop` to `keep`. [`mod_down_reference`] is the definition; the CPU
    /// and the device backends fuse the subtraction and the scaling.
    fn mod_down(
        &self,
        ring: &RingContext,
        x: &PolyBatch,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        mod_down_reference(self, ring, x, keep, drop, conv)
    }

    /// Hybrid key switching of one NTT-domain polynomial `d` (over `plan.qp` minus the special
    /// primes): ModUp of every digit, the inner product with the key's digits (`keys[i]` for
    /// `plan.digits[i]`, each a batch of 2 over the key's full limbs) and ModDown. Returns
    /// `(u0, u1)` over `d`'s limbs, plus the first two polynomials of `onto` when given (NTT
    /// form over the same limbs; relinearization's `(c0, c1)`). [`key_switch_reference`] is
    /// the definition; the CPU fuses it limb by limb (`cpu/fused.rs`), device backends run all
    /// digits per launch.
    fn key_switch(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        onto: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        key_switch_reference(self, ring, d, keys, plan, onto)
    }

    /// Key switching without its ModDown, for results that meet other terms in the extended
    /// basis (relinearize-and-rescale, rotations summed by a linear transform): `(u_0, u_1)`
    /// over `plan.qp`, `P` times the switched value, with `P·lift` added to its first
    /// polynomials: `lift`'s first one or two (NTT form over `d`'s limbs; e.g. a ciphertext's
    /// `(c_0, c_1)`, or a whole size-3 product, whose `c_2` is not lifted, so that
    /// relinearization need not slice it). [`key_switch_ext_reference`] is the definition.
    fn key_switch_ext(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        lift: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        key_switch_ext_reference(self, ring, d, keys, plan, lift)
    }

    /// Relinearization of a size-3 product `(c_0, c_1, c_2)` (NTT form over `plan.q`) finished
    /// by one ModDown that drops `drop`: `ModDown(P·(c_0, c_1) + KS(c_2))` over `keep`, where
    /// `keep ++ drop` is `plan.qp` (`drop`: the special primes, and for CKKS's
    /// relinearize-and-rescale the level's last prime before them). `conv` converts `drop` to
    /// `keep`. [`relinearize_mod_down_reference`] is the definition; a backend overrides it to
    /// read `c_2` in place and to fuse the ModDown's first pass into the key switch.
    #[allow(clippy::too_many_arguments)] // the trait's operands, as the reference takes them
    fn relinearize_mod_down(
        &self,
        ring: &RingContext,
        product: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        relinearize_mod_down_reference(self, ring, product, keys, plan, keep, drop, conv)
    }

    /// [`Self::relinearize_mod_down`] of the tensor product of the size-2 batches `a` and `b`
    /// (NTT form over `plan.q`): `relinearize_mod_down(tensor_product(a, b))`, the words of
    /// [`multiply_relinearize_mod_down_reference`]. A backend overrides it to compute the
    /// product where the key switch reads it, never writing the size-3 batch.
    #[allow(clippy::too_many_arguments)] // the trait's operands, as the reference takes them
    fn multiply_relinearize_mod_down(
        &self,
        ring: &RingContext,
        factors: (&PolyBatch, &PolyBatch),
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        multiply_relinearize_mod_down_reference(self, ring, factors, keys, plan, keep, drop, conv)
    }

    /// The per-element half of a hoisted key switch: `Σ_j keys[j]·σ_g(ups[j])` over the digits'
    /// basis (`ups`: the extended digits from [`mod_up_reference`], one per key digit;
    /// `g = None`: no automorphism), plus `P·σ_g(lift)` on its first `lift.count()`
    /// polynomials (`lift` over that basis minus the special primes `p`). Rotations of one
    /// ciphertext by many steps share the `ups`. [`key_inner_hoisted_reference`] is the
    /// definition.
    #[allow(clippy::too_many_arguments)] // the trait's operands, as the reference takes them
    fn key_inner_hoisted(
        &self,
        ring: &RingContext,
        ups: &[&PolyBatch],
        keys: &[&PolyBatch],
        g: Option<usize>,
        lift: Option<&PolyBatch>,
        p: &Arc<[usize]>,
    ) -> Result<PolyBatch> {
        key_inner_hoisted_reference(self, ring, ups, keys, g, lift, p)
    }

    /// `Σ_r` [`Self::key_inner_hoisted`]`(ups, keys_r, g_r, lift)` over `rotations`
    /// (`(keys_r, g_r)`): hoisted rotations of one ciphertext summed in the extended basis, so
    /// that one ModDown finishes all of them (the rounds of
    /// [`crate::ckks::CkksContext::sum_slots`]). Backends that fuse it write one output instead
    /// of one per rotation and skip the additions; this default composes the two.
    fn key_inner_hoisted_sum(
        &self,
        ring: &RingContext,
        ups: &[&PolyBatch],
        rotations: &[HoistedRotation<'_>],
        lift: Option<&PolyBatch>,
        p: &Arc<[usize]>,
    ) -> Result<PolyBatch> {
        let mut sum: Option<PolyBatch> = None;
        for &(keys, g) in rotations {
            let one = self.key_inner_hoisted(ring, ups, keys, g, lift, p)?;
            match sum.as_mut() {
                Some(acc) => self.add_assign(ring, acc, &one)?,
                None => sum = Some(one),
            }
        }
        sum.ok_or_else(|| Error::InvalidInput("hoisted key switch sum of no rotations".into()))
    }

    /// ModUp of every digit of `d` (one NTT-domain polynomial over `plan.q`) to `plan.qp`, NTT
    /// domain, one batch per digit of `plan.digits`: the first half of a hoisted key switch,
    /// which the rotations of one ciphertext by several steps share ([`Self::key_inner_hoisted`]
    /// is the second). [`mod_up_reference`] is the definition.
    fn mod_up(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        plan: &KeySwitchPlan,
    ) -> Result<Vec<PolyBatch>> {
        mod_up_reference(self, ring, d, plan)
    }

    /// Waits until every queued operation has finished (for timing asynchronous device
    /// backends; `download` already waits). The CPU backend computes eagerly: a no-op.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Totals of the device work this backend issued since it was created, for backends that
    /// count it at their launch and copy helpers (CUDA); `None` elsewhere. Differences of two
    /// snapshots give one operation's cost (`hetensor bench --trace`).
    fn trace_counts(&self) -> Option<TraceCounts> {
        None
    }
}

/// One key-switching digit of a [`KeySwitchPlan`]: its limbs (a contiguous run of `d`'s),
/// the other limbs of `QP` it is extended to, and the (approximate) converter between them.
#[derive(Clone, Debug)]
pub struct KsDigit {
    /// The digit's limbs.
    pub limbs: Arc<[usize]>,
    /// `QP` minus the digit's limbs, in `QP` order.
    pub rest: Arc<[usize]>,
    /// Converter from `limbs` to `rest`.
    pub up: Arc<BaseConverter>,
}

/// The bases of one hybrid key switch at one level ([`Backend::key_switch`]).
#[derive(Clone, Debug)]
pub struct KeySwitchPlan {
    /// The digits present at this level, in key order.
    pub digits: Vec<KsDigit>,
    /// `d`'s limbs followed by the special primes.
    pub qp: Arc<[usize]>,
    /// The ciphertext limbs (`d`'s limbs).
    pub q: Arc<[usize]>,
    /// The special primes.
    pub p: Arc<[usize]>,
    /// Exact converter from `p` to `q` (ModDown).
    pub down: Arc<BaseConverter>,
}

/// The definition of [`Backend::mod_down`], in the backend's own primitives.
pub fn mod_down_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    x: &PolyBatch,
    keep: Arc<[usize]>,
    drop: Arc<[usize]>,
    conv: &BaseConverter,
) -> Result<PolyBatch> {
    let mut tail = be.select_limbs(x, drop.clone())?;
    be.ntt_inverse(ring, &mut tail)?;
    let mut lifted = be.base_convert(ring, &tail, keep.clone(), conv, true)?;
    be.ntt_forward(ring, &mut lifted)?;
    let mut head = be.select_limbs(x, keep.clone())?;
    be.sub_assign(ring, &mut head, &lifted)?;
    be.mul_scalar_assign(ring, &mut head, &mod_down_factors(ring, &keep, &drop))?;
    Ok(head)
}

/// `[(Π drop)^{-1}]_{q_k}` for every `keep` limb: ModDown's final scaling.
pub fn mod_down_factors(ring: &RingContext, keep: &[usize], drop: &[usize]) -> Vec<u32> {
    keep.iter()
        .map(|&k| {
            let m = ring.modulus(k);
            let prod = drop.iter().fold(1u32, |acc, &d| {
                m.mul(acc, ring.modulus(d).value() % m.value())
            });
            m.inv(prod).unwrap_or(0)
        })
        .collect()
}

/// Checks [`Backend::key_switch`]'s operands against the plan.
pub(crate) fn check_key_switch(
    d: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    onto: Option<&PolyBatch>,
) -> Result<()> {
    if onto.is_some_and(|c| c.repr != Repr::Ntt || c.limbs != d.limbs || c.count < 2 || c.n != d.n)
    {
        return Err(Error::InvalidInput(
            "key switch: the batch added to the result must hold 2 polynomials in NTT form over the same limbs".into(),
        ));
    }
    if d.repr != Repr::Ntt || d.count != 1 || *d.limbs != *plan.q {
        return Err(Error::InvalidInput(
            "key switch input must be one polynomial in NTT form over the plan's limbs".into(),
        ));
    }
    if keys.len() != plan.digits.len() || plan.digits.is_empty() {
        return Err(Error::InvalidInput(format!(
            "key switch: {} key digits for {} digits",
            keys.len(),
            plan.digits.len()
        )));
    }
    if keys
        .iter()
        .any(|k| k.count != 2 || k.repr != Repr::Ntt || k.n != d.n)
    {
        return Err(Error::InvalidInput(
            "key switch: every key digit must be 2 polynomials in the NTT domain".into(),
        ));
    }
    Ok(())
}

/// Checks [`Backend::key_switch_ext`]'s operands: those of a key switch, and the lifted one.
pub(crate) fn check_key_switch_ext(
    d: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    lift: Option<&PolyBatch>,
) -> Result<()> {
    check_key_switch(d, keys, plan, None)?;
    lift.map_or(Ok(()), |x| check_lift(x, plan))
}

/// Checks the operand that [`crate::backend::Backend::key_switch_ext`] lifts by `P`.
pub(crate) fn check_lift(x: &PolyBatch, plan: &KeySwitchPlan) -> Result<()> {
    if x.repr != Repr::Ntt || *x.limbs != *plan.q || x.count == 0 {
        return Err(Error::InvalidInput(
            "key switch: the lifted operand must be NTT-domain polynomials over the input's limbs (the first one or two are lifted)".into(),
        ));
    }
    Ok(())
}

/// How many of `lift`'s polynomials [`Backend::key_switch_ext`] lifts: its first one or two.
pub(crate) fn lifted_count(lift: &PolyBatch) -> usize {
    lift.count.min(2)
}

/// The definition of [`Backend::key_switch`], in the backend's own primitives: the key inner
/// product ([`key_inner_reference`]), ModDown, and `onto`'s first two polynomials added.
pub fn key_switch_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    d: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    onto: Option<&PolyBatch>,
) -> Result<PolyBatch> {
    let acc = key_inner_reference(be, ring, d, keys, plan, onto)?;
    key_mod_down_reference(be, ring, &acc, plan, onto)
}

/// The end of [`key_switch_reference`]: ModDown of the accumulated product (over `plan.qp`),
/// then `onto`'s first two polynomials added.
pub fn key_mod_down_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    acc: &PolyBatch,
    plan: &KeySwitchPlan,
    onto: Option<&PolyBatch>,
) -> Result<PolyBatch> {
    let u = be.mod_down(ring, acc, plan.q.clone(), plan.p.clone(), &plan.down)?;
    match onto {
        Some(c) => {
            let mut out = be.slice_polys(c, 0, 2)?;
            be.add_assign(ring, &mut out, &u)?;
            Ok(out)
        }
        None => Ok(u),
    }
}

/// Key switching up to ModDown, in the backend's own primitives (after checking the operands,
/// `onto` included): per digit, ModUp (INTT once, convert, NTT the new limbs), the key digit's
/// limbs at this level, and the product accumulated over `plan.qp`.
pub fn key_inner_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    d: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    onto: Option<&PolyBatch>,
) -> Result<PolyBatch> {
    check_key_switch(d, keys, plan, onto)?;
    let ups = mod_up_reference(be, ring, d, plan)?;
    let ups: Vec<&PolyBatch> = ups.iter().collect();
    key_inner_hoisted_reference(be, ring, &ups, keys, None, None, &plan.p)
}

/// The definition of [`Backend::key_switch_ext`], in the backend's own primitives: ModUp
/// ([`mod_up_reference`]), then the key inner product with `lift` moved into the extended
/// basis ([`key_inner_hoisted_reference`] without an automorphism).
pub fn key_switch_ext_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    d: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    lift: Option<&PolyBatch>,
) -> Result<PolyBatch> {
    check_key_switch_ext(d, keys, plan, lift)?;
    let ups = mod_up_reference(be, ring, d, plan)?;
    let ups: Vec<&PolyBatch> = ups.iter().collect();
    let first_two = match lift {
        Some(x) if x.count > 2 => Some(be.slice_polys(x, 0, 2)?),
        _ => None,
    };
    let lift = first_two.as_ref().or(lift);
    key_inner_hoisted_reference(be, ring, &ups, keys, None, lift, &plan.p)
}

/// Checks [`Backend::relinearize_mod_down`]'s layout: a size-3 product over `plan.q`, and
/// `keep ++ drop` = `plan.qp` with every special prime dropped.
pub(crate) fn check_relinearize_mod_down(
    product: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    keep: &[usize],
    drop: &[usize],
) -> Result<()> {
    if product.count != 3 {
        return Err(Error::CiphertextSize(format!(
            "relinearization needs a size-3 product, got {} polynomials",
            product.count
        )));
    }
    check_relinearize_layout(product, keys, plan, keep, drop)
}

/// The layout checks of [`check_relinearize_mod_down`] for a product's operand (NTT form
/// over `plan.q`), whatever its size.
pub(crate) fn check_relinearize_layout(
    product: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    keep: &[usize],
    drop: &[usize],
) -> Result<()> {
    check_lift(product, plan)?;
    if keys.len() != plan.digits.len() {
        return Err(Error::InvalidInput(format!(
            "relinearization: {} key digits for a plan of {}",
            keys.len(),
            plan.digits.len()
        )));
    }
    let (nk, qp) = (keep.len(), &plan.qp[..]);
    if nk == 0 || nk > plan.q.len() || qp[..nk] != *keep || qp[nk..] != *drop {
        return Err(Error::InvalidInput(
            "relinearization's ModDown must keep the first limbs of the key-switching basis and drop the rest (the special primes last)".into(),
        ));
    }
    Ok(())
}

/// The definition of [`Backend::relinearize_mod_down`]: `c_2` sliced out, switched with
/// `P·(c_0, c_1)` lifted in ([`Backend::key_switch_ext`], the product passed whole as the
/// lift), then one ModDown.
#[allow(clippy::too_many_arguments)]
pub fn relinearize_mod_down_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    product: &PolyBatch,
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    keep: Arc<[usize]>,
    drop: Arc<[usize]>,
    conv: &BaseConverter,
) -> Result<PolyBatch> {
    check_relinearize_mod_down(product, keys, plan, &keep, &drop)?;
    let c2 = be.slice_polys(product, 2, 1)?;
    let ext = be.key_switch_ext(ring, &c2, keys, plan, Some(product))?;
    be.mod_down(ring, &ext, keep, drop, conv)
}

/// The definition of [`Backend::multiply_relinearize_mod_down`]: the tensor product, then
/// [`Backend::relinearize_mod_down`].
#[allow(clippy::too_many_arguments)]
pub fn multiply_relinearize_mod_down_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    (a, b): (&PolyBatch, &PolyBatch),
    keys: &[&PolyBatch],
    plan: &KeySwitchPlan,
    keep: Arc<[usize]>,
    drop: Arc<[usize]>,
    conv: &BaseConverter,
) -> Result<PolyBatch> {
    let product = be.tensor_product(ring, a, b)?;
    be.relinearize_mod_down(ring, &product, keys, plan, keep, drop, conv)
}

/// Checks [`Backend::key_inner_hoisted`]'s operands; returns the digits' basis.
/// One rotation of [`Backend::key_inner_hoisted_sum`]: its key digits and its Galois element
/// (`None`: no automorphism).
pub type HoistedRotation<'a> = (&'a [&'a PolyBatch], Option<usize>);

pub(crate) fn check_key_inner_hoisted(
    ups: &[&PolyBatch],
    keys: &[&PolyBatch],
    lift: Option<&PolyBatch>,
    p: &[usize],
) -> Result<Arc<[usize]>> {
    let first = ups
        .first()
        .ok_or_else(|| Error::InvalidInput("key switch of no digits".into()))?;
    let qp = first.limbs.clone();
    if keys.len() != ups.len()
        || ups
            .iter()
            .any(|u| u.limbs != qp || u.count != 1 || u.repr != Repr::Ntt || u.n != first.n)
        || keys
            .iter()
            .any(|k| k.count != 2 || k.repr != Repr::Ntt || k.n != first.n)
    {
        return Err(Error::InvalidInput(
            "hoisted key switch: one NTT-domain extended digit per 2-polynomial key digit, all over the same limbs".into(),
        ));
    }
    let nq = qp.len().saturating_sub(p.len());
    if nq == 0 || qp[nq..] != *p {
        return Err(Error::InvalidInput(
            "hoisted key switch: the digits' limbs must end with the special primes".into(),
        ));
    }
    if let Some(x) = lift {
        if x.repr != Repr::Ntt || *x.limbs != qp[..nq] || !(1..=2).contains(&x.count) {
            return Err(Error::InvalidInput(
                "hoisted key switch: the lifted operand must be 1 or 2 NTT-domain polynomials over the digits' ciphertext limbs".into(),
            ));
        }
    }
    Ok(qp)
}

/// The row of every limb of `qp` in the key digits, when all digits are over the same limbs
/// and hold every limb of `qp`: what the fused hoisted inner products (CUDA, wgpu) need to
/// index the keys in place. `None`: they compose the reference instead.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) fn hoisted_key_rows(qp: &[usize], keys: &[&PolyBatch]) -> Option<Vec<usize>> {
    let key_limbs = &keys.first()?.limbs;
    if keys.iter().any(|k| k.limbs != *key_limbs) {
        return None;
    }
    qp.iter()
        .map(|l| key_limbs.iter().position(|k| k == l))
        .collect()
}

/// The definition of [`Backend::key_inner_hoisted`], in the backend's own primitives: each
/// digit permuted (`automorphism_ntt`), the key digit's limbs selected when the digits sit
/// below the top level, products accumulated, and `lift` permuted and lifted.
pub fn key_inner_hoisted_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    ups: &[&PolyBatch],
    keys: &[&PolyBatch],
    g: Option<usize>,
    lift: Option<&PolyBatch>,
    p: &Arc<[usize]>,
) -> Result<PolyBatch> {
    let qp = check_key_inner_hoisted(ups, keys, lift, p)?;
    let n = ups[0].n;
    let permute = |x: &PolyBatch| -> Result<Option<PolyBatch>> {
        g.map(|g| be.automorphism_ntt(ring, x, g)).transpose()
    };
    let mut acc = be.zeros(qp.clone(), 2, n, Repr::Ntt)?;
    for (&up, &key) in ups.iter().zip(keys) {
        let permuted = permute(up)?;
        let key_here;
        let key = if key.limbs == qp {
            key
        } else {
            key_here = be.select_limbs(key, qp.clone())?;
            &key_here
        };
        be.mul_acc(ring, &mut acc, key, permuted.as_ref().unwrap_or(up))?;
    }
    if let Some(x) = lift {
        let permuted = permute(x)?;
        let mut lifted = lift_reference(be, ring, permuted.as_ref().unwrap_or(x), p)?;
        if x.count == 1 {
            let zero = be.zeros(qp.clone(), 1, n, Repr::Ntt)?;
            lifted = be.concat(&[&lifted, &zero])?;
        }
        be.add_assign(ring, &mut acc, &lifted)?;
    }
    Ok(acc)
}

/// `P·x` over `x`'s limbs followed by the special primes `p` (NTT form, `P = Π p`): `x` moved
/// exactly into the extended basis of key switching (its special-prime limbs are 0).
pub fn lift_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    x: &PolyBatch,
    p: &Arc<[usize]>,
) -> Result<PolyBatch> {
    let zeros = be.zeros(p.clone(), x.count, x.n, x.repr)?;
    let mut out = be.concat_limbs(x, &zeros)?;
    let factors = lift_factors(ring, &out.limbs, p);
    be.mul_scalar_assign(ring, &mut out, &factors)?;
    Ok(out)
}

/// Where a fused key switch finds every digit's limbs over `plan.qp`, for the GPU kernels that
/// run ModUp for all digits at once and read the key digits in place
/// (`kernels/keyswitch.cu`, `shaders/keyswitch.wgsl`).
#[derive(Clone, Debug)]
#[doc(hidden)]
pub struct FusedKsLayout {
    /// Per digit, the position in `plan.q` of its first limb (its limbs are consecutive).
    pub starts: Vec<usize>,
    /// The primes of every digit's new limbs (`rest`), digit after digit: ModUp's rows.
    pub ext_primes: Vec<usize>,
    /// Per limb `l` of `plan.qp`, `2 + digits` words: its prime, its row in the key, then per
    /// digit the row holding that digit's limb `l`: `1 << 31 | i` for row `i` of `d` (the
    /// digit's own limb), else row `i` of ModUp's rows.
    pub lrow: Vec<u32>,
}

/// The layout of [`FusedKsLayout`], or `None` when the plan is not one the fused kernels take:
/// no special primes, `plan.qp` not `plan.q ++ plan.p`, a digit whose limbs are not
/// consecutive in `plan.q`, or a limb the key lacks.
#[doc(hidden)]
pub fn fused_ks_layout(plan: &KeySwitchPlan, key_limbs: &[usize]) -> Option<FusedKsLayout> {
    let pos = |ls: &[usize], x: usize| ls.iter().position(|&l| l == x);
    let (nq, np) = (plan.q.len(), plan.p.len());
    if np == 0 || plan.qp.len() != nq + np || plan.qp[..nq] != *plan.q || plan.qp[nq..] != *plan.p {
        return None;
    }
    let mut w = FusedKsLayout {
        starts: Vec::with_capacity(plan.digits.len()),
        ext_primes: Vec::new(),
        lrow: Vec::new(),
    };
    let mut base = Vec::with_capacity(plan.digits.len());
    for dg in &plan.digits {
        let (k, s0) = (dg.limbs.len(), pos(&plan.q, *dg.limbs.first()?)?);
        if plan.q.get(s0..s0 + k) != Some(&dg.limbs[..]) || dg.up.to().len() != dg.rest.len() {
            return None;
        }
        w.starts.push(s0);
        base.push(w.ext_primes.len());
        w.ext_primes.extend(dg.rest.iter().copied());
    }
    for &l in plan.qp.iter() {
        w.lrow.extend([l as u32, pos(key_limbs, l)? as u32]);
        for (dg, &b) in plan.digits.iter().zip(&base) {
            w.lrow.push(match pos(&dg.limbs, l) {
                Some(_) => (1 << 31) | pos(&plan.q, l)? as u32,
                None => (b + pos(&dg.rest, l)?) as u32,
            });
        }
    }
    Some(w)
}

/// `P mod q` for every limb `q` of `limbs`, `P` the product of the special primes `p` (0 on
/// the special primes themselves): the factors by which key switching lifts a ciphertext into
/// its extended basis ([`lift_reference`]; the CUDA kernels take them as a table).
pub(crate) fn lift_factors(ring: &RingContext, limbs: &[usize], p: &[usize]) -> Vec<u32> {
    limbs
        .iter()
        .map(|&l| {
            let m = ring.modulus(l);
            p.iter().fold(1u32, |acc, &pi| {
                m.mul(acc, ring.modulus(pi).value() % m.value())
            })
        })
        .collect()
}

/// ModUp of every digit of `d` (NTT, one polynomial) to `plan.qp`, NTT domain: only the new
/// limbs are transformed, a digit's own limbs are `d`'s.
pub fn mod_up_reference<B: Backend + ?Sized>(
    be: &B,
    ring: &RingContext,
    d: &PolyBatch,
    plan: &KeySwitchPlan,
) -> Result<Vec<PolyBatch>> {
    let mut coeff = d.clone();
    be.ntt_inverse(ring, &mut coeff)?;
    plan.digits
        .iter()
        .map(|dg| {
            let part = be.select_limbs(&coeff, dg.limbs.clone())?;
            let mut ext = be.base_convert(ring, &part, dg.rest.clone(), &dg.up, false)?;
            be.ntt_forward(ring, &mut ext)?;
            let joined = be.concat_limbs(&be.select_limbs(d, dg.limbs.clone())?, &ext)?;
            be.select_limbs(&joined, plan.qp.clone())
        })
        .collect()
}

/// Device work counted by a backend ([`Backend::trace_counts`]): what the host asks for
/// (launches, copies, allocations) and an estimate of the kernels' memory traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TraceCounts {
    /// Kernel launches.
    pub launches: u64,
    /// Global-memory bytes the kernels read and write, estimated per launch from its
    /// arguments: each streamed operand word once (broadcast operands as if full size; table
    /// reads and caches ignored). A model, not a hardware counter.
    pub kernel_bytes: u64,
    /// Bytes copied host → device (batches, tables, per-call scalars and pointer arrays).
    pub upload_bytes: u64,
    /// Host → device copies.
    pub uploads: u64,
    /// Bytes copied device → host.
    pub download_bytes: u64,
    /// Bytes copied device → device or written by memsets.
    pub device_copy_bytes: u64,
    /// Device → device copies and memsets.
    pub device_copies: u64,
    /// Device allocations (pool allocations on CUDA).
    pub allocations: u64,
    /// Bytes of those allocations.
    pub alloc_bytes: u64,
}

impl TraceCounts {
    /// The work done between `earlier` and `self`.
    pub fn since(&self, earlier: &TraceCounts) -> TraceCounts {
        TraceCounts {
            launches: self.launches - earlier.launches,
            kernel_bytes: self.kernel_bytes - earlier.kernel_bytes,
            upload_bytes: self.upload_bytes - earlier.upload_bytes,
            uploads: self.uploads - earlier.uploads,
            download_bytes: self.download_bytes - earlier.download_bytes,
            device_copy_bytes: self.device_copy_bytes - earlier.device_copy_bytes,
            device_copies: self.device_copies - earlier.device_copies,
            allocations: self.allocations - earlier.allocations,
            alloc_bytes: self.alloc_bytes - earlier.alloc_bytes,
        }
    }
}

/// Validates the shape of [`Backend::upload`]'s words.
pub(crate) fn check_upload(words: usize, limbs: &[usize], count: usize, n: usize) -> Result<()> {
    if words != count * limbs.len() * n {
        return Err(Error::Shape(format!(
            "upload: {words} words for {count} polys x {} limbs x {n}",
            limbs.len()
        )));
    }
    Ok(())
}

/// Validates the operands of [`Backend::linear_combinations`]; returns the first input (whose
/// shape every input shares) and `(limbs, inputs)`.
pub(crate) fn check_linear_combinations<'a>(
    inputs: &[&'a PolyBatch],
    weights: &[u32],
    outputs: usize,
) -> Result<(&'a PolyBatch, usize, usize)> {
    let first = *inputs
        .first()
        .ok_or_else(|| Error::Shape("linear_combinations of no inputs".into()))?;
    let (nl, ni) = (first.limbs.len(), inputs.len());
    if outputs == 0 || weights.len() != outputs * ni * nl {
        return Err(Error::Shape(format!(
            "linear_combinations: {} weights for {outputs} outputs x {ni} inputs x {nl} limbs",
            weights.len()
        )));
    }
    if inputs.iter().any(|x| {
        x.limbs != first.limbs || x.count != first.count || x.repr != first.repr || x.n != first.n
    }) {
        return Err(Error::Shape(
            "linear_combinations: inputs differ in limbs, count, degree or repr".into(),
        ));
    }
    Ok((first, nl, ni))
}

/// The batch's limbs must exist in the ring and share its degree (a batch from another context
/// would index past the ring's tables).
pub(crate) fn check_ring(ring: &RingContext, p: &PolyBatch) -> Result<()> {
    if p.n != ring.n() || p.limbs.iter().any(|&l| l >= ring.len()) {
        return Err(Error::ParameterMismatch(format!(
            "batch of degree {} over limbs {:?} does not belong to a ring of degree {} with {} primes",
            p.n,
            p.limbs,
            ring.n(),
            ring.len()
        )));
    }
    Ok(())
}

/// Validates an NTT's direction against the batch's representation.
pub(crate) fn check_ntt(p: &PolyBatch, forward: bool) -> Result<()> {
    match (forward, p.repr) {
        (true, Repr::Ntt) => Err(Error::InvalidInput(
            "ntt_forward: batch is already in the NTT domain".into(),
        )),
        (false, Repr::Coeff) => Err(Error::InvalidInput(
            "ntt_inverse: batch is already in coefficient form".into(),
        )),
        _ => Ok(()),
    }
}

/// Validates [`Backend::mul_acc`]'s operands (each may broadcast).
pub(crate) fn check_mul_acc(acc: &PolyBatch, a: &PolyBatch, b: &PolyBatch) -> Result<()> {
    acc.check_compatible(a, "mul_acc")?;
    acc.check_compatible(b, "mul_acc")
}

/// Validates one constant per limb for `op` (`mul_scalar`, `add_scalar`) and returns each
/// reduced mod its limb's prime with its Shoup companion, as every backend multiplies.
#[doc(hidden)]
pub fn limb_scalars(
    op: &'static str,
    ring: &RingContext,
    p: &PolyBatch,
    s: &[u32],
) -> Result<Vec<(u32, u32)>> {
    if s.len() != p.limbs.len() {
        return Err(Error::Shape(format!(
            "{op}: {} constants for {} limbs",
            s.len(),
            p.limbs.len()
        )));
    }
    check_ring(ring, p)?;
    Ok(s.iter()
        .zip(p.limbs.iter())
        .map(|(&x, &li)| {
            let m = ring.modulus(li);
            let w = x % m.value();
            (w, m.shoup(w))
        })
        .collect())
}

/// Validates [`Backend::tensor_product`]'s operands: two size-2 batches in the NTT domain.
pub(crate) fn check_tensor_product(a: &PolyBatch, b: &PolyBatch) -> Result<()> {
    a.check_compatible(b, "tensor_product")?;
    if a.count != 2 || b.count != 2 || a.repr != Repr::Ntt {
        return Err(Error::CiphertextSize(
            "tensor_product needs two size-2 batches in the NTT domain".into(),
        ));
    }
    Ok(())
}

/// Validates [`Backend::base_convert`]'s operands against the converter's bases.
pub(crate) fn check_base_convert(p: &PolyBatch, to: &[usize], conv: &BaseConverter) -> Result<()> {
    if p.repr != Repr::Coeff {
        return Err(Error::InvalidInput(
            "base_convert needs coefficient form".into(),
        ));
    }
    if conv.from().len() != p.limbs.len() || conv.to().len() != to.len() {
        return Err(Error::Shape(
            "base_convert: converter does not match the bases".into(),
        ));
    }
    Ok(())
}

/// Validates an automorphism's operand: `repr` is the domain the op works in (`Coeff` for
/// [`Backend::automorphism`], `Ntt` for [`Backend::automorphism_ntt`]) and `g` must be odd.
pub(crate) fn check_automorphism(p: &PolyBatch, g: usize, repr: Repr) -> Result<()> {
    if p.repr != repr {
        return Err(Error::InvalidInput(match repr {
            Repr::Coeff => "automorphism needs coefficient form".into(),
            Repr::Ntt => "automorphism_ntt needs the NTT domain".into(),
        }));
    }
    if g.is_multiple_of(2) {
        return Err(Error::InvalidInput(format!(
            "Galois element {g} must be odd"
        )));
    }
    Ok(())
}

/// Positions in `p`'s limbs of each limb [`Backend::select_limbs`] asks for.
pub(crate) fn limb_positions(p: &PolyBatch, limbs: &[usize]) -> Result<Vec<usize>> {
    limbs
        .iter()
        .map(|l| {
            p.limbs
                .iter()
                .position(|x| x == l)
                .ok_or_else(|| Error::InvalidInput(format!("select_limbs: limb {l} not present")))
        })
        .collect()
}

/// Validates [`Backend::decrypt_phase`]'s operands: a size-2 NTT-domain ciphertext and one
/// NTT-domain secret polynomial of the same degree.
pub(crate) fn check_phase(ct: &PolyBatch, s: &PolyBatch) -> Result<()> {
    if ct.count != 2 || s.count != 1 || ct.n != s.n {
        return Err(Error::CiphertextSize(format!(
            "decrypt_phase takes a size-2 ciphertext and one secret polynomial of its degree, \
             got {} and {} polynomials of degrees {} and {}",
            ct.count, s.count, ct.n, s.n
        )));
    }
    if ct.repr != Repr::Ntt || s.repr != Repr::Ntt {
        return Err(Error::InvalidInput(
            "decrypt_phase takes NTT-domain operands".into(),
        ));
    }
    Ok(())
}

/// Validates [`Backend::slice_polys`]'s range.
pub(crate) fn check_slice(p: &PolyBatch, start: usize, len: usize) -> Result<()> {
    if start.checked_add(len).is_none_or(|end| end > p.count) {
        return Err(Error::Shape(format!(
            "slice_polys {start}+{len} of {}",
            p.count
        )));
    }
    Ok(())
}

/// Validates [`Backend::concat`]'s parts; returns the first (whose limbs, repr and degree all
/// share) and the total count.
pub(crate) fn check_concat<'a>(parts: &[&'a PolyBatch]) -> Result<(&'a PolyBatch, usize)> {
    let first = *parts
        .first()
        .ok_or_else(|| Error::Shape("concat of no batches".into()))?;
    if parts
        .iter()
        .any(|p| p.limbs != first.limbs || p.repr != first.repr || p.n != first.n)
    {
        return Err(Error::ParameterMismatch(
            "concat: batches differ in limbs/repr".into(),
        ));
    }
    Ok((first, parts.iter().map(|p| p.count).sum()))
}

/// Validates [`Backend::concat_limbs`]'s operands; returns the joined limbs.
pub(crate) fn check_concat_limbs(a: &PolyBatch, b: &PolyBatch) -> Result<Arc<[usize]>> {
    if a.count != b.count || a.repr != b.repr || a.n != b.n {
        return Err(Error::Shape(
            "concat_limbs: batches differ in count/repr".into(),
        ));
    }
    Ok(a.limbs.iter().chain(b.limbs.iter()).copied().collect())
}

/// Validates the operands of [`Backend::scale_and_round`].
pub(crate) fn check_scale_and_round(
    p: &PolyBatch,
    to: &[usize],
    rounder: &ScaleRounder,
) -> Result<()> {
    if p.repr() != Repr::Coeff {
        return Err(Error::InvalidInput(
            "scale_and_round needs coefficient form".into(),
        ));
    }
    let (kq, kc) = (rounder.from_q().len(), rounder.to().len());
    if p.limbs().len() != kq + kc || to.len() != kc || p.limbs()[kq..] != *to {
        return Err(Error::Shape(format!(
            "scale_and_round: tables for {kq}+{kc} limbs do not match a batch over {} limbs into {}",
            p.limbs().len(),
            to.len()
        )));
    }
    Ok(())
}

/// The backend chosen when none is named: the CPU, which always works.
pub fn default_backend() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new())
}

/// Which backend a context computes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// The CPU (rayon); always available, and the reference every other backend matches.
    #[default]
    Cpu,
    /// NVIDIA GPUs through CUDA (feature `cuda`).
    Cuda,
    /// Any GPU (or lavapipe on the CPU) through wgpu compute shaders (feature `wgpu`).
    Wgpu,
    /// The best available: CUDA, then a hardware wgpu adapter, then the CPU.
    Auto,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "wgpu" => Ok(Self::Wgpu),
            "auto" => Ok(Self::Auto),
            other => Err(Error::InvalidInput(format!(
                "unknown backend `{other}` (expected cpu, cuda, wgpu or auto)"
            ))),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
            Self::Auto => "auto",
        })
    }
}

/// Creates a backend of the given kind. A GPU kind that is not compiled in, or whose driver or
/// device is missing, is a clear [`Error::BackendUnavailable`], never a panic.
pub fn create_backend(kind: BackendKind) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(default_backend()),
        BackendKind::Cuda => create_cuda(),
        BackendKind::Wgpu => create_wgpu(),
        BackendKind::Auto => create_cuda()
            .or_else(|_| create_wgpu_hardware())
            .or_else(|_| Ok(default_backend())),
    }
}

#[cfg(feature = "cuda")]
fn create_cuda() -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(cuda::CudaBackend::new()?))
}

#[cfg(not(feature = "cuda"))]
fn create_cuda() -> Result<Arc<dyn Backend>> {
    Err(Error::BackendUnavailable(
        "cuda: this build of hetensor has no CUDA support (rebuild with `--features cuda`)".into(),
    ))
}

#[cfg(feature = "wgpu")]
fn create_wgpu() -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(wgpu::WgpuBackend::new()?))
}

#[cfg(not(feature = "wgpu"))]
fn create_wgpu() -> Result<Arc<dyn Backend>> {
    Err(Error::BackendUnavailable(
        "wgpu: this build of hetensor has no wgpu support (rebuild with `--features wgpu`)".into(),
    ))
}

/// `auto` prefers a real GPU through wgpu, but not a software adapter (lavapipe is slower than
/// the CPU backend).
#[cfg(feature = "wgpu")]
fn create_wgpu_hardware() -> Result<Arc<dyn Backend>> {
    let be = wgpu::WgpuBackend::new()?;
    if be.is_software() {
        return Err(Error::BackendUnavailable(
            "wgpu: only a software adapter is available".into(),
        ));
    }
    Ok(Arc::new(be))
}

#[cfg(not(feature = "wgpu"))]
fn create_wgpu_hardware() -> Result<Arc<dyn Backend>> {
    create_wgpu()
}
