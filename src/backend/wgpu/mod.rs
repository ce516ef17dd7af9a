//! The wgpu backend: every [`Backend`] operation as WGSL compute shaders (`shaders/*.wgsl`) on
//! any Vulkan/Metal/DX12/GL adapter, lavapipe included. The shaders use only 32-bit integer
//! arithmetic (the Gl backend has no 64-bit integers) and return the CPU backend's words.
//!
//! Each trait call records its dispatches and copies into one command buffer and queues it;
//! queued calls are submitted together (at a download, `synchronize`, or every 256 calls), so a
//! key switch or a tensor layer costs one submission and one wait, not one per call. Ring,
//! base-conversion and scale-and-round tables are uploaded once per prime set and cached;
//! pipelines are built once; freed buffers go to a small pool keyed by size.

mod device;

use std::sync::Arc;

use crate::backend::{
    check_automorphism, check_base_convert, check_concat, check_concat_limbs,
    check_key_inner_hoisted, check_key_switch, check_key_switch_ext, check_mul_acc, check_ntt,
    check_ring, check_scale_and_round, check_slice, check_tensor_product, fused_ks_layout,
    hoisted_key_rows, key_inner_hoisted_reference, key_inner_reference, key_mod_down_reference,
    key_switch_ext_reference, lift_factors, lifted_count, limb_positions, limb_scalars,
    mod_down_factors, mod_down_reference, mod_up_reference, Backend, Buffer, FusedKsLayout,
    KeySwitchPlan, PolyBatch, Repr, TraceCounts,
};
use crate::error::{Error, Result};
use crate::math::{BaseConverter, RingContext, ScaleRounder};

use device::{Bind, Gpu, WgpuBuffer};

/// Invocations per workgroup of every shader (`WG` in `shaders/common.wgsl`).
const WG: u64 = 256;
/// Words per workgroup-memory NTT tile (`TILE` in `shaders/ntt.wgsl`).
const LOG_TILE: u32 = 12;
/// Global NTT stages per dispatch at most (`fwd_stages`, `inv_stages`: 2^k words per
/// invocation). The shaders take up to 4; on lavapipe 4 measured 5-15 % slower than 2
/// (2026-12-05, 2^16), so 2 until a GPU says otherwise.
const MAX_PASS_STAGES: u32 = 2;
/// First limb-map entry in every params block (`prm[8 + l]`).
const PRM_HEAD: usize = 8;

/// A wgpu device with its cached tables and pipelines.
#[derive(Clone)]
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.gpu.info.name)
            .field("api", &self.gpu.info.backend)
            .field("type", &self.gpu.info.device_type)
            .finish()
    }
}

impl WgpuBackend {
    /// Opens the best adapter (honouring `WGPU_BACKEND`, e.g. `vulkan` or `gl`); no adapter is
    /// [`Error::BackendUnavailable`].
    pub fn new() -> Result<Self> {
        Ok(Self {
            gpu: Arc::new(Gpu::new()?),
        })
    }

    /// Whether the adapter is a software rasterizer (lavapipe, llvmpipe, WARP).
    pub fn is_software(&self) -> bool {
        self.gpu.info.device_type == ::wgpu::DeviceType::Cpu
    }

    /// Adapter name and graphics API, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.gpu.info.name, self.gpu.info.backend)
    }

    fn buf<'a>(&self, p: &'a PolyBatch) -> Result<&'a WgpuBuffer> {
        let b = match &p.buf {
            Buffer::Device(d) => d.as_any().downcast_ref::<WgpuBuffer>(),
            _ => None,
        }
        .ok_or_else(|| Error::Backend("wgpu backend got a buffer from another backend".into()))?;
        if !Arc::ptr_eq(&b.gpu, &self.gpu) {
            return Err(Error::Backend(
                "wgpu backend got a buffer from another wgpu device".into(),
            ));
        }
        Ok(b)
    }

    fn wrap(
        &self,
        b: WgpuBuffer,
        limbs: Arc<[usize]>,
        count: usize,
        n: usize,
        repr: Repr,
    ) -> PolyBatch {
        PolyBatch::from_parts(Buffer::Device(Box::new(b)), limbs, count, n, repr)
    }

    /// Params block: `head` (up to 8 words) then the prime index of every limb, then `extra`.
    fn prm(head: &[u32], limbs: &[usize], extra: &[u32]) -> Vec<u32> {
        let mut v = vec![0u32; PRM_HEAD];
        v[..head.len()].copy_from_slice(head);
        v.extend(limbs.iter().map(|&l| l as u32));
        v.extend_from_slice(extra);
        v
    }

    /// Element-wise `a op= (b, c)` with optional broadcast operands, chunked over polynomials.
    fn elementwise(
        &self,
        ring: &RingContext,
        entry: &'static str,
        a: &mut PolyBatch,
        operands: &[&PolyBatch],
        extra: &[u32],
    ) -> Result<()> {
        let rt = self.gpu.ring_tables(ring)?;
        check_ring(ring, a)?;
        let pw = a.poly_words();
        let log_n = a.n().trailing_zeros();
        let chunks = self.gpu.poly_chunks(a.count(), pw)?;
        let ops: Vec<&WgpuBuffer> = operands
            .iter()
            .map(|o| self.buf(o))
            .collect::<Result<_>>()?;
        let mut flags = 0u32;
        for (i, o) in operands.iter().enumerate() {
            if o.count() == 1 && a.count() != 1 {
                flags |= 1 << i;
            }
        }
        let ab = self.buf(a)?;
        let limbs = a.limbs_arc();
        let nl = limbs.len() as u32;
        self.gpu.run(|enc| {
            for &(start, len) in &chunks {
                let words = (len * pw) as u64;
                let prm = Self::prm(&[log_n, nl, words as u32, flags], &limbs, extra);
                let prm = self.gpu.params(&prm);
                let mut binds = vec![Bind::range(0, ab.get(), start * pw, len * pw)];
                for (i, (o, ob)) in operands.iter().zip(&ops).enumerate() {
                    binds.push(if o.count() == 1 && a.count() != 1 {
                        Bind::range(1 + i as u32, ob.get(), 0, pw)
                    } else {
                        Bind::range(1 + i as u32, ob.get(), start * pw, len * pw)
                    });
                }
                binds.push(Bind::whole(3, &rt.moduli));
                binds.push(Bind::whole(4, &prm));
                self.gpu
                    .dispatch(enc, entry, a.n() >= 256, &binds, words.div_ceil(WG))?;
            }
            Ok(())
        })
    }

    /// `a op= s[limb]` (`mul_scalar`, `add_scalar`): the reduced constants and their Shoup
    /// companions travel in the params block.
    fn scalar(
        &self,
        ring: &RingContext,
        entry: &'static str,
        a: &mut PolyBatch,
        s: &[u32],
    ) -> Result<()> {
        let extra: Vec<u32> = limb_scalars(entry, ring, a, s)?
            .into_iter()
            .flat_map(|(w, ws)| [w, ws])
            .collect();
        self.elementwise(ring, entry, a, &[], &extra)
    }

    fn ntt(&self, ring: &RingContext, p: &mut PolyBatch, forward: bool) -> Result<()> {
        let rt = self.gpu.ring_tables(ring)?;
        check_ring(ring, p)?;
        let n = p.n();
        let log_n = n.trailing_zeros();
        let log_s = log_n.min(LOG_TILE);
        let pw = p.poly_words();
        let nl = p.limbs().len();
        let chunks = self.gpu.poly_chunks(p.count(), pw)?;
        let pb = self.buf(p)?;
        let limbs = p.limbs_arc();
        self.gpu.run(|enc| {
            for &(start, len) in &chunks {
                let rows = (len * nl) as u32;
                let data = Bind::range(0, pb.get(), start * pw, len * pw);
                // One dispatch: a tile pass, or k global stages from log2 t = tl.
                let mut step = |entry: &'static str, tl: u32, last: bool, k: u32| -> Result<()> {
                    let prm = Self::prm(
                        &[log_n, nl as u32, rows, tl, last as u32, log_s, k],
                        &limbs,
                        &[],
                    );
                    let prm = self.gpu.params(&prm);
                    let global = entry.ends_with("_stages");
                    let groups = if global {
                        (rows as u64 * (n as u64 >> k)).div_ceil(WG)
                    } else {
                        rows as u64 * (n as u64 >> log_s)
                    };
                    let binds = [
                        data.clone(),
                        Bind::whole(1, &rt.tw),
                        Bind::whole(2, &rt.moduli),
                        Bind::whole(3, &prm),
                    ];
                    let aligned = global && (n >> k) >= WG as usize;
                    self.gpu
                        .dispatch_stages(enc, entry, (aligned, k), &binds, groups)
                };
                // The global stages in as few passes as hold them, split evenly, then the tile's.
                let pass = |left: u32| left.div_ceil(left.div_ceil(MAX_PASS_STAGES));
                if forward {
                    let mut tl = log_n;
                    while tl > log_s {
                        let k = pass(tl - log_s);
                        step("fwd_stages", tl - 1, false, k)?;
                        tl -= k;
                    }
                    step("fwd_tail", 0, false, 0)?;
                } else {
                    step("inv_head", 0, log_n == log_s, 0)?;
                    let mut tl = log_s;
                    while tl < log_n {
                        let k = pass(log_n - tl);
                        step("inv_stages", tl, tl + k == log_n, k)?;
                        tl += k;
                    }
                }
            }
            Ok(())
        })?;
        p.set_repr(if forward { Repr::Ntt } else { Repr::Coeff });
        Ok(())
    }

    /// Row-wise permutation kernels (`automorphism`, `automorphism_ntt`) into a new batch.
    fn permute(
        &self,
        ring: &RingContext,
        p: &PolyBatch,
        g: usize,
        entry: &'static str,
    ) -> Result<PolyBatch> {
        let rt = self.gpu.ring_tables(ring)?;
        check_ring(ring, p)?;
        let n = p.n();
        let log_n = n.trailing_zeros();
        let pw = p.poly_words();
        let nl = p.limbs().len();
        let chunks = self.gpu.poly_chunks(p.count(), pw)?;
        let pb = self.buf(p)?;
        let out = self.gpu.alloc(p.count() * pw)?;
        let g = (g % (2 * n)) as u32;
        self.gpu.run(|enc| {
            for &(start, len) in &chunks {
                let rows = (len * nl) as u32;
                let prm = self
                    .gpu
                    .params(&Self::prm(&[log_n, nl as u32, rows, g], p.limbs(), &[]));
                let mut binds = vec![
                    Bind::range(0, out.get(), start * pw, len * pw),
                    Bind::range(1, pb.get(), start * pw, len * pw),
                ];
                if entry == "automorphism" {
                    binds.push(Bind::whole(3, &rt.moduli));
                }
                binds.push(Bind::whole(4, &prm));
                self.gpu
                    .dispatch(enc, entry, false, &binds, ((len * pw) as u64).div_ceil(WG))?;
            }
            Ok(())
        })?;
        Ok(self.wrap(out, p.limbs_arc(), p.count(), n, p.repr()))
    }

    /// Shared driver of `base_convert` and `scale_and_round`: one table, chunks over polynomials.
    fn rns_kernel(
        &self,
        entry: &'static str,
        p: &PolyBatch,
        table: &::wgpu::Buffer,
        to: Arc<[usize]>,
        exact: bool,
    ) -> Result<PolyBatch> {
        let n = p.n();
        let log_n = n.trailing_zeros();
        let (iw, ow) = (p.poly_words(), to.len() * n);
        let chunks = self.gpu.poly_chunks(p.count(), iw.max(ow))?;
        let pb = self.buf(p)?;
        let out = self.gpu.alloc(p.count() * ow)?;
        self.gpu.run(|enc| {
            for &(start, len) in &chunks {
                let prm = self
                    .gpu
                    .params(&[log_n, len as u32, exact as u32, 0, 0, 0, 0, 0]);
                let binds = [
                    Bind::range(0, out.get(), start * ow, len * ow),
                    Bind::range(1, pb.get(), start * iw, len * iw),
                    Bind::whole(2, table),
                    Bind::whole(4, &prm),
                ];
                self.gpu.dispatch(
                    enc,
                    entry,
                    n >= 256,
                    &binds,
                    ((len * ow) as u64).div_ceil(WG),
                )?;
            }
            Ok(())
        })?;
        Ok(self.wrap(out, to, p.count(), n, Repr::Coeff))
    }

    /// ModDown of `x` over `keep ++ drop` (NTT form), with the subtraction and the scaling in
    /// one dispatch (`moddown_finish`) and, with `onto`, relinearization's addition of its
    /// first two polynomials too. `None` when `x` has another layout or needs more than one
    /// binding (the caller then composes the reference).
    fn mod_down_fused(
        &self,
        ring: &RingContext,
        x: &PolyBatch,
        (keep, drop): (&Arc<[usize]>, &Arc<[usize]>),
        conv: &BaseConverter,
        onto: Option<&PolyBatch>,
    ) -> Result<Option<PolyBatch>> {
        let (nk, nd, n) = (keep.len(), drop.len(), x.n());
        let count = x.count();
        if x.repr() != Repr::Ntt
            || nk == 0
            || nd == 0
            || x.limbs().len() != nk + nd
            || x.limbs()[..nk] != **keep
            || x.limbs()[nk..] != **drop
            || self.gpu.poly_chunks(x.count(), x.poly_words())?.len() > 1
        {
            return Ok(None);
        }
        check_ring(ring, x)?;
        let mut tail = self.select_limbs(x, drop.clone())?;
        self.ntt_inverse(ring, &mut tail)?;
        let mut lifted = self.base_convert(ring, &tail, keep.clone(), conv, true)?;
        self.ntt_forward(ring, &mut lifted)?;
        let mut out = match onto {
            Some(c) => self.slice_polys(c, 0, 2)?,
            None => self.wrap(
                self.gpu.alloc(count * nk * n)?,
                keep.clone(),
                count,
                n,
                Repr::Ntt,
            ),
        };
        let extra: Vec<u32> = mod_down_factors(ring, keep, drop)
            .iter()
            .zip(keep.iter())
            .flat_map(|(&w, &l)| {
                let m = ring.modulus(l);
                let w = w % m.value();
                [w, m.shoup(w)]
            })
            .collect();
        let rt = self.gpu.ring_tables(ring)?;
        let (ob, xb, lb) = (self.buf(&out)?, self.buf(x)?, self.buf(&lifted)?);
        let words = (count * nk * n) as u64;
        let head = [
            n.trailing_zeros(),
            nk as u32,
            words as u32,
            onto.is_some() as u32,
            (nk + nd) as u32,
        ];
        self.gpu.run(|enc| {
            let prm = self.gpu.params(&Self::prm(&head, keep, &extra));
            let binds = [
                Bind::range(0, ob.get(), 0, count * nk * n),
                Bind::range(1, xb.get(), 0, x.count() * (nk + nd) * n),
                Bind::range(2, lb.get(), 0, count * nk * n),
                Bind::whole(3, &rt.moduli),
                Bind::whole(4, &prm),
            ];
            self.gpu
                .dispatch(enc, "moddown_finish", n >= 256, &binds, words.div_ceil(WG))
        })?;
        out.set_repr(Repr::Ntt);
        Ok(Some(out))
    }

    /// Copies `(src offset, dst offset, words)` runs from one batch into a new buffer.
    fn gather(
        &self,
        src: &WgpuBuffer,
        words: usize,
        runs: &[(usize, usize, usize)],
    ) -> Result<WgpuBuffer> {
        let runs: Vec<_> = runs.iter().map(|&(s, d, len)| (src, s, d, len)).collect();
        self.copy_runs(words, &runs)
    }

    /// Copies `(source, src offset, dst offset, words)` runs into a new buffer of `words`.
    fn copy_runs(
        &self,
        words: usize,
        runs: &[(&WgpuBuffer, usize, usize, usize)],
    ) -> Result<WgpuBuffer> {
        let out = self.gpu.alloc(words)?;
        self.gpu.run(|enc| {
            for &(src, s, d, len) in runs {
                self.gpu.copy(enc, (src.get(), s), (out.get(), d), len);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The fused key switch's layout and cached table for `d` under `plan` with key digits
    /// over `key_limbs`, or `None` when the plan's layout, the batch sizes or the adapter's
    /// binding limits call for the composed reference instead ([`fused_ks_layout`]).
    fn fused_ks(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        plan: &KeySwitchPlan,
        key_limbs: &[usize],
    ) -> Result<Option<(FusedKsLayout, Arc<::wgpu::Buffer>)>> {
        if d.repr() != Repr::Ntt || d.count() != 1 || d.limbs() != &plan.q[..] {
            return Ok(None);
        }
        let Some(layout) = fused_ks_layout(plan, key_limbs) else {
            return Ok(None);
        };
        let (n, nl) = (d.n(), plan.qp.len());
        let sizes = [
            layout.ext_primes.len() * n,
            2 * nl * n,
            2 * key_limbs.len() * n,
        ];
        if !self.gpu.fits_fused_key_switch(&sizes) {
            return Ok(None);
        }
        check_ring(ring, d)?;
        let tab = self.gpu.key_switch_table(ring, plan, key_limbs, &layout)?;
        Ok(Some((layout, tab)))
    }

    /// ModUp's new rows for every digit at once (`layout.ext_primes`, NTT form): an inverse
    /// NTT of a copy of `d`, one `mod_up_convert` dispatch for all digits, one forward NTT.
    fn mod_up_rows(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        layout: &FusedKsLayout,
        tab: &::wgpu::Buffer,
    ) -> Result<PolyBatch> {
        let n = d.n();
        let mut coeff = self.slice_polys(d, 0, 1)?;
        self.ntt_inverse(ring, &mut coeff)?;
        let rows = layout.ext_primes.len();
        let out = self.gpu.alloc(rows * n)?;
        let cb = self.buf(&coeff)?;
        self.gpu.run(|enc| {
            let prm = self.gpu.params(&[n.trailing_zeros(), rows as u32]);
            let binds = [
                Bind::range(0, out.get(), 0, rows * n),
                Bind::range(1, cb.get(), 0, coeff.poly_words()),
                Bind::whole(2, tab),
                Bind::whole(4, &prm),
            ];
            let groups = ((rows * n) as u64).div_ceil(WG);
            self.gpu
                .dispatch(enc, "mod_up_convert", n >= 256, &binds, groups)
        })?;
        let mut ext = self.wrap(out, layout.ext_primes.as_slice().into(), 1, n, Repr::Coeff);
        self.ntt_forward(ring, &mut ext)?;
        Ok(ext)
    }

    /// A key switch up to its ModDown, all digits at once: ModUp ([`Self::mod_up_rows`]) and
    /// the inner product with the key digits read in place and `P·lift` added (`ks_inner`,
    /// three digits per dispatch), into a new 2-polynomial batch over `plan.qp`. `None`: the
    /// caller composes the reference.
    fn ks_accumulate(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        lift: Option<&PolyBatch>,
    ) -> Result<Option<PolyBatch>> {
        let key_limbs = keys[0].limbs();
        if keys.iter().any(|k| k.limbs() != key_limbs) {
            return Ok(None);
        }
        let Some((layout, tab)) = self.fused_ks(ring, d, plan, key_limbs)? else {
            return Ok(None);
        };
        let ext = self.mod_up_rows(ring, d, &layout, &tab)?;
        let (n, nq, nl, nd) = (d.n(), plan.q.len(), plan.qp.len(), keys.len());
        let rt = self.gpu.ring_tables(ring)?;
        let acc = self.gpu.alloc(2 * nl * n)?;
        let (db, eb) = (self.buf(d)?, self.buf(&ext)?);
        let kb = keys
            .iter()
            .map(|k| self.buf(k))
            .collect::<Result<Vec<_>>>()?;
        let (lb, nlift) = match lift {
            Some(x) => (self.buf(x)?, lifted_count(x)),
            None => (db, 0),
        };
        let key_words = 2 * key_limbs.len() * n;
        self.gpu.run(|enc| {
            for (pass, j0) in (0..nd).step_by(3).enumerate() {
                let m = (nd - j0).min(3);
                let head = [
                    n.trailing_zeros(),
                    m as u32,
                    j0 as u32,
                    nlift as u32,
                    nq as u32,
                ];
                let prm = self.gpu.params(
                    &[
                        &head[..],
                        &[
                            key_limbs.len() as u32,
                            nl as u32,
                            (pass > 0) as u32,
                            nd as u32,
                        ],
                    ]
                    .concat(),
                );
                // Slots past the pass's digits are bound to its last one and never read.
                let key = |i: usize| kb[j0 + i.min(m - 1)].get();
                let binds = [
                    Bind::range(0, acc.get(), 0, 2 * nl * n),
                    Bind::range(1, db.get(), 0, nq * n),
                    Bind::range(2, eb.get(), 0, ext.poly_words()),
                    Bind::whole(3, &rt.moduli),
                    Bind::whole(4, &prm),
                    Bind::range(5, lb.get(), 0, nlift.max(1) * nq * n),
                    Bind::range(6, key(0), 0, key_words),
                    Bind::range(7, key(1), 0, key_words),
                    Bind::range(8, key(2), 0, key_words),
                    Bind::whole(9, &tab),
                ];
                let groups = ((2 * nl * n) as u64).div_ceil(WG);
                self.gpu
                    .dispatch(enc, "ks_inner", n >= 256, &binds, groups)?;
            }
            Ok(())
        })?;
        Ok(Some(self.wrap(acc, plan.qp.clone(), 2, n, Repr::Ntt)))
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn upload(
        &self,
        words: Vec<u32>,
        limbs: Arc<[usize]>,
        count: usize,
        n: usize,
        repr: Repr,
    ) -> Result<PolyBatch> {
        super::check_upload(words.len(), &limbs, count, n)?;
        let b = self.gpu.upload(&words)?;
        Ok(self.wrap(b, limbs, count, n, repr))
    }

    fn download(&self, p: &PolyBatch) -> Result<Vec<u32>> {
        let b = self.buf(p)?;
        self.gpu.read(b.get(), p.count() * p.poly_words())
    }

    fn trace_counts(&self) -> Option<TraceCounts> {
        Some(self.gpu.trace.snapshot())
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.flush(true)
    }

    fn zeros(&self, limbs: Arc<[usize]>, count: usize, n: usize, repr: Repr) -> Result<PolyBatch> {
        let b = self.gpu.alloc(count * limbs.len() * n)?;
        self.gpu.run(|enc| {
            self.gpu.clear(enc, b.get());
            Ok(())
        })?;
        Ok(self.wrap(b, limbs, count, n, repr))
    }

    fn ntt_forward(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()> {
        check_ntt(p, true)?;
        self.ntt(ring, p, true)
    }

    fn ntt_inverse(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()> {
        check_ntt(p, false)?;
        self.ntt(ring, p, false)
    }

    fn add_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        a.check_compatible(b, "add")?;
        self.elementwise(ring, "add", a, &[b], &[])
    }

    fn sub_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        a.check_compatible(b, "sub")?;
        self.elementwise(ring, "sub", a, &[b], &[])
    }

    fn neg_assign(&self, ring: &RingContext, a: &mut PolyBatch) -> Result<()> {
        self.elementwise(ring, "neg", a, &[], &[])
    }

    fn mul_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        a.check_compatible(b, "mul")?;
        self.elementwise(ring, "mul", a, &[b], &[])
    }

    fn mul_acc(
        &self,
        ring: &RingContext,
        acc: &mut PolyBatch,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<()> {
        check_mul_acc(acc, a, b)?;
        self.elementwise(ring, "mul_acc", acc, &[a, b], &[])
    }

    fn mul_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()> {
        self.scalar(ring, "mul_scalar", a, s)
    }

    fn add_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()> {
        self.scalar(ring, "add_scalar", a, s)
    }

    fn linear_combinations(
        &self,
        ring: &RingContext,
        inputs: &[&PolyBatch],
        weights: &[u32],
        outputs: usize,
    ) -> Result<Vec<PolyBatch>> {
        let (first, nl, ni) = super::check_linear_combinations(inputs, weights, outputs)?;
        let bufs = inputs
            .iter()
            .map(|x| self.buf(x))
            .collect::<Result<Vec<_>>>()?;
        let rt = self.gpu.ring_tables(ring)?;
        check_ring(ring, first)?;
        let n = first.n();
        let log_n = n.trailing_zeros();
        let rows = first.count() * nl;
        // Rows per chunk: the stacked inputs and the stacked outputs must each fit one binding.
        let rc = self.gpu.row_chunk(n * ni.max(outputs))?.min(rows.max(1));
        let stage = self.gpu.alloc(ni * rc * n)?;
        let tmp = self.gpu.alloc(outputs * rc * n)?;
        let outs: Vec<WgpuBuffer> = (0..outputs)
            .map(|_| self.gpu.alloc(rows * n))
            .collect::<Result<_>>()?;
        self.gpu.run(|enc| {
            for r0 in (0..rows).step_by(rc) {
                let len = rc.min(rows - r0);
                let words = len * n;
                for (i, b) in bufs.iter().enumerate() {
                    self.gpu
                        .copy(enc, (b.get(), r0 * n), (stage.get(), i * words), words);
                }
                let prm = Self::prm(
                    &[
                        log_n,
                        nl as u32,
                        words as u32,
                        ni as u32,
                        outputs as u32,
                        r0 as u32,
                    ],
                    first.limbs(),
                    weights,
                );
                let prm = self.gpu.params(&prm);
                let binds = [
                    Bind::range(0, tmp.get(), 0, outputs * words),
                    Bind::range(1, stage.get(), 0, ni * words),
                    Bind::whole(3, &rt.moduli),
                    Bind::whole(4, &prm),
                ];
                self.gpu.dispatch(
                    enc,
                    "lincomb",
                    n >= 256,
                    &binds,
                    ((outputs * words) as u64).div_ceil(WG),
                )?;
                for (k, o) in outs.iter().enumerate() {
                    self.gpu
                        .copy(enc, (tmp.get(), k * words), (o.get(), r0 * n), words);
                }
            }
            Ok(())
        })?;
        Ok(outs
            .into_iter()
            .map(|o| self.wrap(o, first.limbs_arc(), first.count(), n, first.repr()))
            .collect())
    }

    fn tensor_product(
        &self,
        ring: &RingContext,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<PolyBatch> {
        check_tensor_product(a, b)?;
        let rt = self.gpu.ring_tables(ring)?;
        check_ring(ring, a)?;
        let w = a.poly_words();
        self.gpu.check_binding(3 * w)?;
        let (ab, bb) = (self.buf(a)?, self.buf(b)?);
        let out = self.gpu.alloc(3 * w)?;
        let log_n = a.n().trailing_zeros();
        self.gpu.run(|enc| {
            let prm = self.gpu.params(&Self::prm(
                &[log_n, a.limbs().len() as u32, w as u32],
                a.limbs(),
                &[],
            ));
            let binds = [
                Bind::whole(1, ab.get()),
                Bind::whole(2, bb.get()),
                Bind::whole(3, &rt.moduli),
                Bind::whole(4, &prm),
                Bind::whole(5, out.get()),
            ];
            self.gpu.dispatch(
                enc,
                "tensor_product",
                a.n() >= 256,
                &binds,
                (w as u64).div_ceil(WG),
            )
        })?;
        Ok(self.wrap(out, a.limbs_arc(), 3, a.n(), Repr::Ntt))
    }

    fn base_convert(
        &self,
        _ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        conv: &BaseConverter,
        exact: bool,
    ) -> Result<PolyBatch> {
        check_base_convert(p, &to, conv)?;
        let table = self.gpu.converter_table(conv)?;
        self.rns_kernel("base_convert", p, &table, to, exact)
    }

    fn scale_and_round(
        &self,
        _ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        rounder: &ScaleRounder,
    ) -> Result<PolyBatch> {
        check_scale_and_round(p, &to, rounder)?;
        let table = self.gpu.rounder_table(rounder)?;
        self.rns_kernel("scale_round", p, &table, to, false)
    }

    fn automorphism(&self, ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch> {
        check_automorphism(p, g, Repr::Coeff)?;
        self.permute(ring, p, g, "automorphism")
    }

    fn automorphism_ntt(&self, ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch> {
        check_automorphism(p, g, Repr::Ntt)?;
        self.permute(ring, p, g, "automorphism_ntt")
    }

    fn select_limbs(&self, p: &PolyBatch, limbs: Arc<[usize]>) -> Result<PolyBatch> {
        let pos = limb_positions(p, &limbs)?;
        let (n, nl) = (p.n(), p.limbs().len());
        // Runs of consecutive source limbs become one copy each.
        let mut runs = Vec::new();
        for c in 0..p.count() {
            let mut j = 0;
            while j < pos.len() {
                let mut len = 1;
                while j + len < pos.len() && pos[j + len] == pos[j] + len {
                    len += 1;
                }
                runs.push(((c * nl + pos[j]) * n, (c * pos.len() + j) * n, len * n));
                j += len;
            }
        }
        let out = self.gather(self.buf(p)?, p.count() * limbs.len() * n, &runs)?;
        Ok(self.wrap(out, limbs, p.count(), n, p.repr()))
    }

    fn slice_polys(&self, p: &PolyBatch, start: usize, len: usize) -> Result<PolyBatch> {
        check_slice(p, start, len)?;
        let w = p.poly_words();
        let out = self.gather(self.buf(p)?, len * w, &[(start * w, 0, len * w)])?;
        Ok(self.wrap(out, p.limbs_arc(), len, p.n(), p.repr()))
    }

    fn concat(&self, parts: &[&PolyBatch]) -> Result<PolyBatch> {
        let (first, count) = check_concat(parts)?;
        let mut srcs = Vec::with_capacity(parts.len());
        let mut at = 0;
        for p in parts {
            srcs.push((self.buf(p)?, at, p.count() * p.poly_words()));
            at += p.count() * p.poly_words();
        }
        let out = self.gpu.alloc(count * first.poly_words())?;
        self.gpu.run(|enc| {
            for &(b, d, len) in &srcs {
                self.gpu.copy(enc, (b.get(), 0), (out.get(), d), len);
            }
            Ok(())
        })?;
        Ok(self.wrap(out, first.limbs_arc(), count, first.n(), first.repr()))
    }

    fn mod_down(
        &self,
        ring: &RingContext,
        x: &PolyBatch,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        match self.mod_down_fused(ring, x, (&keep, &drop), conv, None)? {
            Some(out) => Ok(out),
            None => mod_down_reference(self, ring, x, keep, drop, conv),
        }
    }

    fn key_switch(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        onto: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        check_key_switch(d, keys, plan, onto)?;
        let acc = match self.ks_accumulate(ring, d, keys, plan, None)? {
            Some(acc) => acc,
            None => key_inner_reference(self, ring, d, keys, plan, onto)?,
        };
        match self.mod_down_fused(ring, &acc, (&plan.q, &plan.p), &plan.down, onto)? {
            Some(out) => Ok(out),
            None => key_mod_down_reference(self, ring, &acc, plan, onto),
        }
    }

    fn key_switch_ext(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        lift: Option<&PolyBatch>,
    ) -> Result<PolyBatch> {
        check_key_switch_ext(d, keys, plan, lift)?;
        match self.ks_accumulate(ring, d, keys, plan, lift)? {
            Some(acc) => Ok(acc),
            None => key_switch_ext_reference(self, ring, d, keys, plan, lift),
        }
    }

    fn mod_up(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        plan: &KeySwitchPlan,
    ) -> Result<Vec<PolyBatch>> {
        // ModUp reads no key rows: the table of a key over exactly `plan.qp`.
        let Some((layout, tab)) = self.fused_ks(ring, d, plan, &plan.qp)? else {
            return mod_up_reference(self, ring, d, plan);
        };
        let ext = self.mod_up_rows(ring, d, &layout, &tab)?;
        let (n, nl, nd) = (d.n(), plan.qp.len(), plan.digits.len());
        let (db, eb) = (self.buf(d)?, self.buf(&ext)?);
        // Digit j's batch over `plan.qp`: its own limbs from `d`, the others from ModUp's rows
        // (`layout.lrow`, the rows `ks_inner` reads), consecutive rows copied as one run.
        (0..nd)
            .map(|j| {
                let mut runs: Vec<(&WgpuBuffer, usize, usize, usize)> = Vec::new();
                for l in 0..nl {
                    let s = layout.lrow[l * (nd + 2) + 2 + j];
                    let (src, row) = (
                        if s >> 31 == 1 { db } else { eb },
                        (s & !(1 << 31)) as usize,
                    );
                    match runs.last_mut() {
                        Some((b, at, _, len)) if std::ptr::eq(*b, src) && *at + *len == row * n => {
                            *len += n
                        }
                        _ => runs.push((src, row * n, l * n, n)),
                    }
                }
                let out = self.copy_runs(nl * n, &runs)?;
                Ok(self.wrap(out, plan.qp.clone(), 1, n, Repr::Ntt))
            })
            .collect()
    }

    fn key_inner_hoisted(
        &self,
        ring: &RingContext,
        ups: &[&PolyBatch],
        keys: &[&PolyBatch],
        g: Option<usize>,
        lift: Option<&PolyBatch>,
        p: &Arc<[usize]>,
    ) -> Result<PolyBatch> {
        let qp = check_key_inner_hoisted(ups, keys, lift, p)?;
        check_ring(ring, ups[0])?;
        let key_limbs = keys[0].limbs();
        let (n, nl, nd) = (ups[0].n(), qp.len(), ups.len());
        let key_words = 2 * key_limbs.len() * n;
        let krow = match hoisted_key_rows(&qp, keys) {
            Some(rows) if self.gpu.fits_fused_key_switch(&[2 * nl * n, key_words]) => rows,
            _ => return key_inner_hoisted_reference(self, ring, ups, keys, g, lift, p),
        };
        let nq = nl - p.len();
        let rt = self.gpu.ring_tables(ring)?;
        let per_limb: Vec<u32> = qp
            .iter()
            .zip(&krow)
            .zip(lift_factors(ring, &qp, p))
            .flat_map(|((&l, &k), f)| [l as u32, k as u32, f])
            .collect();
        let ub = ups
            .iter()
            .map(|u| self.buf(u))
            .collect::<Result<Vec<_>>>()?;
        let kb = keys
            .iter()
            .map(|k| self.buf(k))
            .collect::<Result<Vec<_>>>()?;
        let (lb, nlift) = match lift {
            Some(x) => (self.buf(x)?, x.count()),
            None => (ub[0], 0),
        };
        let g = g.map_or(0, |g| (g % (2 * n)) as u32);
        let acc = self.gpu.alloc(2 * nl * n)?;
        self.gpu.run(|enc| {
            for (pass, j0) in (0..nd).step_by(3).enumerate() {
                let m = (nd - j0).min(3);
                let mut head = vec![
                    n.trailing_zeros(),
                    m as u32,
                    j0 as u32,
                    nlift as u32,
                    nq as u32,
                    key_limbs.len() as u32,
                    nl as u32,
                    (pass > 0) as u32,
                    g,
                ];
                head.resize(16, 0);
                head.extend_from_slice(&per_limb);
                let prm = self.gpu.params(&head);
                // Slots past the pass's digits are bound to its last one and never read.
                let at = |i: usize| j0 + i.min(m - 1);
                let binds = [
                    Bind::range(0, acc.get(), 0, 2 * nl * n),
                    Bind::whole(3, &rt.moduli),
                    Bind::whole(4, &prm),
                    Bind::range(5, lb.get(), 0, nlift.max(1) * nq * n),
                    Bind::range(6, kb[at(0)].get(), 0, key_words),
                    Bind::range(7, kb[at(1)].get(), 0, key_words),
                    Bind::range(8, kb[at(2)].get(), 0, key_words),
                    Bind::range(10, ub[at(0)].get(), 0, nl * n),
                    Bind::range(11, ub[at(1)].get(), 0, nl * n),
                    Bind::range(12, ub[at(2)].get(), 0, nl * n),
                ];
                let groups = ((2 * nl * n) as u64).div_ceil(WG);
                self.gpu
                    .dispatch(enc, "ks_inner_hoisted", n >= 256, &binds, groups)?;
            }
            Ok(())
        })?;
        Ok(self.wrap(acc, qp, 2, n, Repr::Ntt))
    }

    fn concat_limbs(&self, a: &PolyBatch, b: &PolyBatch) -> Result<PolyBatch> {
        let limbs = check_concat_limbs(a, b)?;
        let (ab, bb) = (self.buf(a)?, self.buf(b)?);
        let (wa, wb) = (a.poly_words(), b.poly_words());
        let out = self.gpu.alloc(a.count() * (wa + wb))?;
        self.gpu.run(|enc| {
            for c in 0..a.count() {
                let d = c * (wa + wb);
                self.gpu.copy(enc, (ab.get(), c * wa), (out.get(), d), wa);
                self.gpu
                    .copy(enc, (bb.get(), c * wb), (out.get(), d + wa), wb);
            }
            Ok(())
        })?;
        Ok(self.wrap(out, limbs, a.count(), a.n(), a.repr()))
    }
}
