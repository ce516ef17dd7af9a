//! CUDA backend: cudarc (driver API, dynamic loading) + NVRTC-compiled kernels (`kernels/*.cu`).
//!
//! Every [`Backend`] operation runs on the device with the same integer arithmetic as the CPU
//! backend (word-for-word identical results). All work is queued on one stream; the host waits
//! only in [`Backend::download`]. Per-ring tables (moduli and reduction constants, twiddles),
//! base-conversion and scale-and-round tables, limb-index arrays and automorphism maps are
//! uploaded once and cached, keyed by their content (the primes), never by address.
//! Kernel launch layouts are in [`launch`] and `kernels/README.md`.

pub mod compile;
#[cfg(feature = "cuda-emu")]
#[doc(hidden)]
pub mod emu;
pub mod launch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    result as dres, sys as dsys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, DriverError, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::{
    check_automorphism, check_base_convert, check_concat, check_concat_limbs,
    check_key_inner_hoisted, check_key_switch, check_key_switch_ext, check_mul_acc, check_ntt,
    check_relinearize_layout, check_relinearize_mod_down, check_ring, check_scale_and_round,
    check_slice, check_tensor_product, fused_ks_layout, hoisted_key_rows,
    key_inner_hoisted_reference, key_switch_ext_reference, key_switch_reference, lift_factors,
    lifted_count, limb_positions, limb_scalars, mod_down_factors, mod_down_reference,
    mod_up_reference, multiply_relinearize_mod_down_reference, relinearize_mod_down_reference,
    Backend, Buffer, DeviceBuffer, KeySwitchPlan, PolyBatch, Repr, Trace, TraceCounts,
};
use crate::error::{Error, Result};
use crate::math::{BaseConverter, Modulus, RingContext, ScaleRounder};
use compile::Output;
use launch::{grid_1d, NttGeometry, BLOCK_1D};

fn drv(e: DriverError) -> Error {
    Error::Backend(format!("cuda: {e:?}"))
}

/// Device memory of one [`PolyBatch`] (`len` words; at least one word is allocated).
#[derive(Debug)]
pub struct CudaBuffer {
    data: CudaSlice<u32>,
    len: usize,
    trace: Arc<Trace>,
}

impl DeviceBuffer for CudaBuffer {
    fn clone_buffer(&self) -> Box<dyn DeviceBuffer> {
        let data = self
            .data
            .stream()
            .clone_dtod(&self.data)
            .expect("cuda: device-to-device copy of a batch failed");
        let bytes = 4 * self.data.len();
        self.trace.alloc(bytes);
        self.trace.device_copy(bytes);
        Box::new(CudaBuffer {
            data,
            len: self.len,
            trace: self.trace.clone(),
        })
    }

    fn wipe(&mut self) {
        let stream = self.data.stream().clone();
        self.trace.device_copy(4 * self.data.len());
        if let Err(e) = stream.memset_zeros(&mut self.data) {
            eprintln!("cuda: wiping a device buffer failed: {e:?}");
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The words the kernels read for each prime (`struct Mod` in kernels/common.cuh): q, bits,
/// mu32, 0, barrett lo, barrett hi.
pub fn mod_words(ms: &[Modulus]) -> Vec<u32> {
    let mut v = Vec::with_capacity(6 * ms.len());
    for m in ms {
        let (bits, mu) = m.barrett32();
        let b = m.barrett_constant();
        v.extend_from_slice(&[m.value(), bits, mu, 0, b as u32, (b >> 32) as u32]);
    }
    v
}

/// Per-ring tables: every prime of the ring, indexed by the ring's limb index.
struct RingTables {
    mods: CudaSlice<u32>,
    psi: CudaSlice<u32>,
    psi_s: CudaSlice<u32>,
    ipsi: CudaSlice<u32>,
    ipsi_s: CudaSlice<u32>,
    ninv: CudaSlice<u32>,
}

struct ConvTables {
    from: CudaSlice<u32>,
    to: CudaSlice<u32>,
    bhi: CudaSlice<u32>,
    bhc: CudaSlice<u32>,
    bmc: CudaSlice<u32>,
    frac: CudaSlice<u64>,
}

struct RoundTables {
    q: CudaSlice<u32>,
    c: CudaSlice<u32>,
    fint: CudaSlice<u32>,
    theta: CudaSlice<u64>,
    lam: CudaSlice<u32>,
}

/// A batch of conversions' device tables (`conv_row_word` in kernels/keyswitch.cu).
struct ConvRows {
    desc: CudaSlice<u32>,
    tab: CudaSlice<u32>,
}

/// How a forward NTT launched by `CudaBackend::ntt_launch` ends.
enum RowsPass {
    /// The rows kernel (`ntt_fwd_rows`) writes the transform.
    Plain,
    /// `ntt_fwd_rows_moddown` with these extra arguments (out, x, xstride, fac, add) ends a
    /// ModDown instead.
    ModDown([A; 5]),
    /// No rows kernel: a fused kernel (`ntt_fwd_rows_ks`) runs those stages, on read
    /// (forward) or before it writes (inverse: ModDown's tail).
    Skip,
}

/// The polynomial a fused key switch decomposes: polynomial `index` of a device batch, read
/// in place (relinearization's `c_2` inside the size-3 product), or the word-wise product of
/// two (`ptr2` not 0: the tensor product's `a_1·b_1`, computed where it is read).
#[derive(Clone, Copy)]
struct DigitSource {
    ptr: u64,
    ptr2: u64,
    n: usize,
}

impl DigitSource {
    fn of(be: &CudaBackend, batch: &PolyBatch, index: usize) -> Result<Self> {
        if index >= batch.count {
            return Err(Error::Shape(format!(
                "key switching: polynomial {index} of a batch of {}",
                batch.count
            )));
        }
        Ok(Self {
            ptr: be.bptr(batch)? + 4 * (index * batch.poly_words()) as u64,
            ptr2: 0,
            n: batch.n,
        })
    }

    /// `a_1·b_1` of two size-2 batches.
    fn product(be: &CudaBackend, a: &PolyBatch, b: &PolyBatch) -> Result<Self> {
        let words = 4 * a.poly_words() as u64;
        Ok(Self {
            ptr: be.bptr(a)? + words,
            ptr2: be.bptr(b)? + words,
            n: a.n,
        })
    }
}

/// What a fused key switch lifts by `P` into its accumulator: the first `count` (1 or 2)
/// polynomials at `ptr`, or with `b` not 0 the tensor product's `(a_0·b_0, a_0·b_1 + a_1·b_0)`
/// of the size-2 batches at `ptr` (a) and `b`.
#[derive(Clone, Copy, Default)]
struct LiftSource {
    ptr: u64,
    count: usize,
    b: u64,
}

impl LiftSource {
    fn of(be: &CudaBackend, lift: Option<&PolyBatch>) -> Result<Self> {
        Ok(match lift {
            Some(x) => Self {
                ptr: be.bptr(x)?,
                count: lifted_count(x),
                b: 0,
            },
            None => Self::default(),
        })
    }

    /// Polynomials read per lifted limb.
    fn words(&self) -> usize {
        if self.b != 0 {
            4
        } else {
            self.count
        }
    }
}

/// Where `ntt_fwd_rows_ks` writes the accumulator `(u_0, u_1)` over the key-switching basis:
/// rows `l < keep` of both polynomials to `head` (`[2][keep][N]`), the others to `tail`
/// (`[2][|qp| − keep][N]`: the rows a ModDown drops), which gets the inverse NTT's rows
/// stages first when `tail_inv`.
#[derive(Clone, Copy)]
struct KsOut {
    head: u64,
    tail: u64,
    keep: usize,
    tail_inv: bool,
}

/// Where a ModDown's dropped rows come from.
#[derive(Clone, Copy)]
enum Tail {
    /// Their own batch at this address, the inverse NTT's rows stages done (`ntt_fwd_rows_ks`).
    RowsDone(u64),
    /// Read in place from `src` (`stride` rows per polynomial) by the inverse NTT's rows
    /// kernel, which writes them to a new batch at `dst`: no copy.
    From { dst: u64, src: u64, stride: usize },
}

/// Device tables of one key-switching plan ([`ks_table_words`]).
struct KsTables {
    up: ConvRows,
    /// The prime of every ModUp row (the batched NTT's limb map).
    ext_primes: Vec<usize>,
    lrow: CudaSlice<u32>,
    /// `P mod q` for every limb of `plan.qp` (0 on the special primes): the lift's factors.
    lift_factors: CudaSlice<u32>,
    /// ModUp rows (all digits).
    rows: usize,
}

use self::KernelArg as A;

type RingKey = (usize, Vec<u32>);

/// Two lists of prime values (a converter's or ModDown's bases), a cache key.
type PrimeLists = (Vec<u32>, Vec<u32>);

/// The primes' values (cache keys hold values, never addresses).
fn values(ms: &[Modulus]) -> Vec<u32> {
    ms.iter().map(|m| m.value()).collect()
}

/// A converter's cache key: its source and target primes.
fn conv_key(conv: &BaseConverter) -> PrimeLists {
    (values(conv.from()), values(conv.to()))
}

/// The host words of a ring's tables (what [`CudaBackend`] uploads per `(N, primes)`).
#[doc(hidden)]
pub struct RingTableWords {
    pub mods: Vec<u32>,
    pub psi: Vec<u32>,
    pub psi_s: Vec<u32>,
    pub ipsi: Vec<u32>,
    pub ipsi_s: Vec<u32>,
    pub ninv: Vec<u32>,
}

/// Every prime's `struct Mod`, `[prime][N]` twiddles and Shoup companions, `[prime][2]` N^{-1}.
#[doc(hidden)]
pub fn ring_table_words(ring: &RingContext) -> RingTableWords {
    let n = ring.n();
    let np = ring.len();
    let mut t = RingTableWords {
        mods: mod_words(ring.moduli()),
        psi: Vec::with_capacity(np * n),
        psi_s: Vec::with_capacity(np * n),
        ipsi: Vec::with_capacity(np * n),
        ipsi_s: Vec::with_capacity(np * n),
        ninv: Vec::with_capacity(2 * np),
    };
    for i in 0..np {
        let plan = ring.plan(i);
        let (a, b, c, d) = plan.tables();
        t.psi.extend_from_slice(a);
        t.psi_s.extend_from_slice(b);
        t.ipsi.extend_from_slice(c);
        t.ipsi_s.extend_from_slice(d);
        let (ni, nis) = plan.n_inv();
        t.ninv.extend_from_slice(&[ni, nis]);
    }
    t
}

/// The host words of a base converter's tables (`base_convert`'s fm, tm, bhi, bhc, bmc, frac).
#[doc(hidden)]
pub struct ConvTableWords {
    pub from: Vec<u32>,
    pub to: Vec<u32>,
    pub bhi: Vec<u32>,
    pub bhc: Vec<u32>,
    pub bmc: Vec<u32>,
    pub frac: Vec<u64>,
}

#[doc(hidden)]
pub fn conv_table_words(conv: &BaseConverter) -> ConvTableWords {
    ConvTableWords {
        from: mod_words(conv.from()),
        to: mod_words(conv.to()),
        bhi: conv
            .b_hat_inv_table()
            .iter()
            .flat_map(|&(w, ws)| [w, ws])
            .collect(),
        bhc: conv.b_hat_mod_c_table().to_vec(),
        bmc: conv.b_mod_c_table().to_vec(),
        frac: conv.frac_table().to_vec(),
    }
}

/// The host words of a scale-rounder's tables (`scale_round`'s qm, cm, fint, theta, lam).
#[doc(hidden)]
pub struct RoundTableWords {
    pub q: Vec<u32>,
    pub c: Vec<u32>,
    pub fint: Vec<u32>,
    pub theta: Vec<u64>,
    pub lam: Vec<u32>,
}

#[doc(hidden)]
pub fn round_table_words(r: &ScaleRounder) -> RoundTableWords {
    RoundTableWords {
        q: mod_words(r.from_q()),
        c: mod_words(r.to()),
        fint: r.int_part_table().to_vec(),
        theta: r.frac_table().to_vec(),
        lam: r
            .lambda_table()
            .iter()
            .zip(r.to())
            .flat_map(|(&l, m)| [l, m.shoup(l)])
            .collect(),
    }
}

/// The host words of a key-switching plan's tables (ModUp's conversion desc and tab for
/// `conv_row_word`, its rows' primes, and `ntt_fwd_rows_ks`'s lrow), for `d` over `plan.q`
/// and keys over `key_limbs`.
/// `None` when a digit is not a contiguous run of `d`'s limbs or the key lacks a limb (the
/// backend then runs the reference composition).
#[doc(hidden)]
pub struct KsTableWords {
    pub desc: Vec<u32>,
    pub tab: Vec<u32>,
    pub ext_primes: Vec<usize>,
    pub lrow: Vec<u32>,
}

/// Appends one converter's rows to a conversion table (`conv_row_word` in
/// kernels/keyswitch.cu): its source block (Mods, `(ŵ_i, shoup)`, and for `exact` the u64
/// `floor(2^62/b_i)`) to `tab` and a descriptor per target prime (its `[B/b_i]_c` row in `tab`)
/// to `desc`, the sources starting at row `s0` of each polynomial.
fn push_conv(
    desc: &mut Vec<u32>,
    tab: &mut Vec<u32>,
    conv: &BaseConverter,
    s0: usize,
    exact: bool,
) {
    let t = conv_table_words(conv);
    let k = t.from.len() / 6;
    // Mods and u64 words stay 8-byte aligned.
    let put = |tab: &mut Vec<u32>, words: &[u32]| {
        if tab.len() % 2 == 1 {
            tab.push(0);
        }
        let at = tab.len();
        tab.extend_from_slice(words);
        at as u32
    };
    let fm = put(tab, &t.from);
    let bhi = put(tab, &t.bhi);
    let frac_words: Vec<u32> = t
        .frac
        .iter()
        .flat_map(|&f| [f as u32, (f >> 32) as u32])
        .collect();
    let frac = if exact { put(tab, &frac_words) } else { 0 };
    for (j, &bmc) in t.bmc.iter().enumerate() {
        let bhc = put(tab, &t.bhc[j * k..(j + 1) * k]);
        let bmc = if exact { bmc } else { 0 };
        desc.extend([s0 as u32, k as u32, fm, bhi, bhc, frac, bmc, 0]);
    }
}

#[doc(hidden)]
pub fn ks_table_words(plan: &KeySwitchPlan, key_limbs: &[usize]) -> Option<KsTableWords> {
    let layout = fused_ks_layout(plan, key_limbs)?;
    let mut w = KsTableWords {
        desc: Vec::new(),
        tab: Vec::new(),
        ext_primes: layout.ext_primes,
        lrow: layout.lrow,
    };
    for (dg, &s0) in plan.digits.iter().zip(&layout.starts) {
        push_conv(&mut w.desc, &mut w.tab, &dg.up, s0, false);
    }
    Some(w)
}

/// The conversion table of ModDown's exact converter (`conv_row_word`'s desc and tab).
#[doc(hidden)]
pub fn down_table_words(conv: &BaseConverter) -> (Vec<u32>, Vec<u32>) {
    let (mut desc, mut tab) = (Vec::new(), Vec::new());
    push_conv(&mut desc, &mut tab, conv, 0, true);
    (desc, tab)
}

/// One kernel launch: name, 1-D grid and block, dynamic shared bytes, arguments.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub name: &'static str,
    pub grid: u32,
    pub block: u32,
    pub smem: u32,
    pub args: Vec<KernelArg>,
}

/// Device addresses an NTT reads: the batch, the ring's `mods`, the limb list, the twiddles
/// and companions of the direction (psi or ipsi), and `ninv`, `src` and `src2` (inverse only:
/// the rows kernel reads its input from `src`, the batch itself or another of the same layout,
/// times `src2`'s words unless that is 0).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct NttPtrs {
    pub data: u64,
    pub src: u64,
    pub src2: u64,
    /// Rows per polynomial of `src` (its row `c·src_stride + l` is the transform's `c·nl + l`).
    pub src_stride: u32,
    pub mods: u64,
    pub limbs: u64,
    pub tw: u64,
    pub tws: u64,
    pub ninv: u64,
}

/// The launches of a batched NTT of `ntts` transforms of degree `n` over `nl` limb positions
/// (forward: columns kernel when N > 2048, then rows; inverse: rows, then columns).
#[doc(hidden)]
pub fn ntt_launches(
    n: usize,
    ntts: u64,
    nl: u32,
    forward: bool,
    p: NttPtrs,
) -> Result<Vec<Launch>> {
    let g = NttGeometry::new(n)?;
    let log_n = g.log_n;
    let common = [
        A::W(p.data),
        A::W(p.mods),
        A::W(p.limbs),
        A::W(p.tw),
        A::W(p.tws),
    ];
    let cols = |name: &'static str| -> Result<Launch> {
        let mut args = common.to_vec();
        if !forward {
            args.push(A::W(p.ninv));
        }
        args.extend([A::U(nl), A::U(log_n), A::U(g.log_n1), A::U(g.log_c)]);
        let (grid, block, smem) = g.cols_launch(ntts)?;
        Ok(Launch {
            name,
            grid,
            block,
            smem,
            args,
        })
    };
    let rows = |name: &'static str, scale: bool| -> Result<Launch> {
        let mut args = common.to_vec();
        if !forward {
            args.push(A::W(p.ninv));
        }
        args.extend([A::U(nl), A::U(log_n), A::U(g.log_n2)]);
        if !forward {
            args.extend([
                A::U(scale as u32),
                A::W(p.src),
                A::W(p.src2),
                A::U(p.src_stride),
            ]);
        }
        let (grid, block, smem) = g.rows_launch(ntts)?;
        Ok(Launch {
            name,
            grid,
            block,
            smem,
            args,
        })
    };
    let mut v = Vec::with_capacity(2);
    if forward {
        if g.log_n1 > 0 {
            v.push(cols("ntt_fwd_cols")?);
        }
        v.push(rows("ntt_fwd_rows", false)?);
    } else {
        v.push(rows("intt_rows", g.log_n1 == 0)?);
        if g.log_n1 > 0 {
            v.push(cols("intt_cols")?);
        }
    }
    Ok(v)
}

/// The global-memory words a launch reads and writes, modelled from its arguments (the
/// counters of `hetensor bench --trace`): an NTT kernel reads and writes its blocks' tiles
/// (`smem / 4` words each); a grid-stride kernel streams its operands over `total` (its last
/// argument) words: e.g. `ew_binary` reads a and b and writes a (3 words per element).
/// Broadcast operands count as full size; tables and caches are ignored.
#[doc(hidden)]
pub fn kernel_words(name: &str, grid: u32, smem: u32, args: &[KernelArg]) -> u64 {
    let total = match args.last() {
        Some(A::W(t)) => *t,
        _ => 0,
    };
    let u = |i: usize| match args.get(i) {
        Some(A::U(v)) => *v as u64,
        _ => 0,
    };
    match name {
        "ntt_fwd_cols" | "ntt_fwd_rows" | "intt_cols" => 2 * grid as u64 * (smem as u64 / 4),
        // and a second source tile read when it multiplies two (src2, its last pointer).
        "intt_rows" => {
            let src2 =
                matches!(args.get(args.len().wrapping_sub(2)), Some(A::W(p)) if *p != 0) as u64;
            (2 + src2) * grid as u64 * (smem as u64 / 4)
        }
        // the tile written (its conversion's sources are counted by the caller).
        "ntt_fwd_cols_conv" => grid as u64 * (smem as u64 / 4),
        "ew_neg" | "ew_scalar" | "automorphism" | "permute_limbs" | "gather_limbs"
        | "concat_limbs" => 2 * total,
        "ew_binary" => 3 * total,
        "ew_mul_acc" => 4 * total,
        // a and b (2 polynomials each) read, 3 written, per word of one polynomial.
        "tensor_product" => 7 * total,
        // ni inputs read, `outputs` written.
        "lincomb" => (u(3) + u(4)) * total,
        // the outputs, and the k source limbs per kt target limbs.
        "base_convert" => total + total * u(8) / u(9).max(1),
        // per coefficient: kq + kc limbs read, kc written.
        "scale_round" => total * (u(7) + 2 * u(8)),
        // the tile read, x's tile read, out written (and the added batch read).
        "ntt_fwd_rows_moddown" => {
            let add = matches!(args.last(), Some(A::W(p)) if *p != 0) as u64;
            (3 + add) * grid as u64 * (smem as u64 / 4)
        }
        _ => 0,
    }
}

#[derive(Default)]
struct Caches {
    rings: HashMap<RingKey, Arc<RingTables>>,
    indices: HashMap<Vec<usize>, Arc<CudaSlice<u32>>>,
    convs: HashMap<PrimeLists, Arc<ConvTables>>,
    rounders: HashMap<(Vec<u32>, Vec<u32>, u64), Arc<RoundTables>>,
    ntt_maps: HashMap<(usize, usize), Arc<CudaSlice<u32>>>,
    /// ModDown's `([P^{-1}]_{q_l}, shoup)` per (keep primes, drop primes).
    factors: HashMap<PrimeLists, Arc<CudaSlice<u32>>>,
    /// Key-switching tables per (ring, plan layout).
    ks: HashMap<(RingKey, Vec<Vec<usize>>), Arc<KsTables>>,
    /// ModDown's conversion tables per (drop primes, keep primes).
    downs: HashMap<PrimeLists, Arc<ConvRows>>,
    /// Device arrays of device pointers (key digits), keyed by the pointers themselves.
    ptrs: HashMap<Vec<u64>, Arc<CudaSlice<u64>>>,
    /// `lift_factors` per (extended basis primes, special primes).
    lifts: HashMap<PrimeLists, Arc<CudaSlice<u32>>>,
}

/// A kernel argument (device pointers are 64-bit words, as in the driver API).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelArg {
    /// A 64-bit word: a device pointer or a `u64` count.
    W(u64),
    /// A `u32`.
    U(u32),
}

/// The CUDA backend (one device, one stream).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cc: (i32, i32),
    device_name: String,
    funcs: HashMap<&'static str, CudaFunction>,
    caches: Mutex<Caches>,
    trace: Arc<Trace>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaBackend({}, sm_{}{})",
            self.device_name, self.cc.0, self.cc.1
        )
    }
}

fn unavailable(msg: impl Into<String>) -> Error {
    Error::BackendUnavailable(format!("cuda: {}", msg.into()))
}

impl CudaBackend {
    /// Opens device `HETENSOR_CUDA_DEVICE` (default 0) and compiles the kernels for it.
    ///
    /// [`Error::BackendUnavailable`] (never a panic) when the driver library, the NVRTC library
    /// or a device is missing, or the driver fails.
    pub fn new() -> Result<Self> {
        // SAFETY: only tries to dlopen the library (cudarc panics on any call without it).
        if !unsafe { dsys::is_culib_present() } {
            return Err(unavailable(
                "no CUDA driver library (libcuda.so.1) found: no NVIDIA driver on this machine",
            ));
        }
        if !compile::nvrtc_available() {
            return Err(unavailable(
                "no NVRTC library (libnvrtc.so.13) found: add the CUDA toolkit's lib64 or pip \
                 nvidia-cuda-nvrtc's nvidia/cu13/lib to LD_LIBRARY_PATH",
            ));
        }
        let count = match CudaContext::device_count() {
            Ok(c) => c,
            Err(e) if e.0 == dsys::cudaError_enum::CUDA_ERROR_NO_DEVICE => 0,
            Err(e) => return Err(unavailable(format!("driver error: {e:?}"))),
        };
        if count <= 0 {
            return Err(unavailable("no CUDA device found"));
        }
        let ordinal: usize = std::env::var("HETENSOR_CUDA_DEVICE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ordinal >= count as usize {
            return Err(unavailable(format!(
                "HETENSOR_CUDA_DEVICE={ordinal} but only {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("driver error creating a context: {e:?}")))?;
        // One stream: stream order is the only synchronization needed.
        // SAFETY: every buffer of this backend is used on its single stream.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("driver error: {e:?}")))?;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        keep_freed_memory_pooled(&ctx);
        let stream = ctx.default_stream();
        let module = load_kernels(&ctx, cc)?;
        let mut funcs = HashMap::new();
        for &name in compile::KERNEL_NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| unavailable(format!("kernel {name} missing: {e:?}")))?;
            funcs.insert(name, f);
        }
        Ok(Self {
            ctx,
            stream,
            cc,
            device_name,
            funcs,
            caches: Mutex::new(Caches::default()),
            trace: Arc::default(),
        })
    }

    /// The device's name and compute capability.
    pub fn device_info(&self) -> (String, (i32, i32)) {
        (self.device_name.clone(), self.cc)
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }

    fn buf<'a>(&self, p: &'a PolyBatch) -> Result<&'a CudaBuffer> {
        match &p.buf {
            Buffer::Device(d) => d.as_any().downcast_ref::<CudaBuffer>(),
            _ => None,
        }
        .ok_or_else(|| Error::Backend("CUDA backend got a buffer from another backend".into()))
    }

    fn bptr(&self, p: &PolyBatch) -> Result<u64> {
        Ok(self.ptr(&self.buf(p)?.data))
    }

    fn htod<T: DeviceRepr>(&self, words: &[T]) -> Result<CudaSlice<T>> {
        self.ctx.bind_to_thread().map_err(drv)?;
        // SAFETY: fully overwritten by the copy below (or never read when empty).
        let dst = unsafe { self.stream.alloc::<T>(words.len().max(1)) }.map_err(drv)?;
        self.trace.alloc(dst.num_bytes());
        if !words.is_empty() {
            self.trace.upload(std::mem::size_of_val(words));
            // Pageable source: the driver stages it before returning, without a stream sync.
            // SAFETY: dst holds at least words.len() elements.
            unsafe { dres::memcpy_htod_async(self.ptr(&dst), words, self.stream.cu_stream()) }
                .map_err(drv)?;
        }
        Ok(dst)
    }

    fn alloc(&self, len: usize) -> Result<CudaSlice<u32>> {
        self.ctx.bind_to_thread().map_err(drv)?;
        self.trace.alloc(4 * len.max(1));
        // SAFETY: callers write every word before it is read.
        unsafe { self.stream.alloc::<u32>(len.max(1)) }.map_err(drv)
    }

    fn wrap(
        &self,
        data: CudaSlice<u32>,
        limbs: Arc<[usize]>,
        count: usize,
        n: usize,
        repr: Repr,
    ) -> PolyBatch {
        let len = count * limbs.len() * n;
        PolyBatch::from_parts(
            Buffer::Device(Box::new(CudaBuffer {
                data,
                len,
                trace: self.trace.clone(),
            })),
            limbs,
            count,
            n,
            repr,
        )
    }

    fn launch(&self, name: &str, grid: u32, block: u32, smem: u32, args: &[A]) -> Result<()> {
        let words = kernel_words(name, grid, smem, args);
        self.launch_counted(name, (grid, block, smem), args, words)
    }

    /// A launch whose modelled traffic (`words`) the caller gives (kernels whose operand
    /// sizes are not in their arguments).
    fn launch_counted(
        &self,
        name: &str,
        (grid, block, smem): (u32, u32, u32),
        args: &[A],
        words: u64,
    ) -> Result<()> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| Error::Backend(format!("cuda: kernel {name} not loaded")))?;
        self.ctx.bind_to_thread().map_err(drv)?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                A::W(v) => b.arg(v),
                A::U(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        self.trace.launch(4 * words as usize);
        // SAFETY: argument lists match the kernel signatures in kernels/*.cu, and every
        // pointer refers to a live allocation of the sizes the kernel indexes.
        unsafe { b.launch(cfg) }.map_err(drv)?;
        Ok(())
    }

    fn launch_1d(&self, name: &str, total: u64, args: &[A]) -> Result<()> {
        if total == 0 {
            return Ok(());
        }
        self.launch(name, grid_1d(total), BLOCK_1D, 0, args)
    }

    /// The value cached under `key` in the map `pick` selects, or `make`'s, then cached (the
    /// cache lock is held while `make` uploads).
    fn cached<K: Eq + std::hash::Hash, V: Clone>(
        &self,
        pick: impl FnOnce(&mut Caches) -> &mut HashMap<K, V>,
        key: K,
        make: impl FnOnce() -> Result<V>,
    ) -> Result<V> {
        let mut c = self.caches.lock().expect("cuda cache poisoned");
        let map = pick(&mut c);
        if let Some(v) = map.get(&key) {
            return Ok(v.clone());
        }
        let v = make()?;
        map.insert(key, v.clone());
        Ok(v)
    }

    fn ring(&self, ring: &RingContext) -> Result<Arc<RingTables>> {
        let key: RingKey = (ring.n(), ring.moduli().iter().map(|m| m.value()).collect());
        self.cached(
            |c| &mut c.rings,
            key,
            || {
                let w = ring_table_words(ring);
                Ok(Arc::new(RingTables {
                    mods: self.htod(&w.mods)?,
                    psi: self.htod(&w.psi)?,
                    psi_s: self.htod(&w.psi_s)?,
                    ipsi: self.htod(&w.ipsi)?,
                    ipsi_s: self.htod(&w.ipsi_s)?,
                    ninv: self.htod(&w.ninv)?,
                }))
            },
        )
    }

    /// A cached device array of small indices (limb lists, limb positions).
    fn indices(&self, idx: &[usize]) -> Result<Arc<CudaSlice<u32>>> {
        self.cached(
            |c| &mut c.indices,
            idx.to_vec(),
            || {
                let words: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                Ok(Arc::new(self.htod(&words)?))
            },
        )
    }

    fn conv(&self, conv: &BaseConverter) -> Result<Arc<ConvTables>> {
        self.cached(
            |c| &mut c.convs,
            conv_key(conv),
            || {
                let w = conv_table_words(conv);
                Ok(Arc::new(ConvTables {
                    from: self.htod(&w.from)?,
                    to: self.htod(&w.to)?,
                    bhi: self.htod(&w.bhi)?,
                    bhc: self.htod(&w.bhc)?,
                    bmc: self.htod(&w.bmc)?,
                    frac: self.htod(&w.frac)?,
                }))
            },
        )
    }

    fn rounder(&self, r: &ScaleRounder) -> Result<Arc<RoundTables>> {
        let key = (values(r.from_q()), values(r.to()), r.multiplier());
        self.cached(
            |c| &mut c.rounders,
            key,
            || {
                let w = round_table_words(r);
                Ok(Arc::new(RoundTables {
                    q: self.htod(&w.q)?,
                    c: self.htod(&w.c)?,
                    fint: self.htod(&w.fint)?,
                    theta: self.htod(&w.theta)?,
                    lam: self.htod(&w.lam)?,
                }))
            },
        )
    }

    fn ntt_map(&self, n: usize, g: usize) -> Result<Arc<CudaSlice<u32>>> {
        let g = g % (2 * n);
        self.cached(
            |c| &mut c.ntt_maps,
            (n, g),
            || Ok(Arc::new(self.htod(&launch::automorphism_ntt_map(n, g))?)),
        )
    }

    /// Common arguments of the element-wise kernels: ring moduli, limb map, nl, log_n.
    fn limb_args(&self, ring: &RingContext, p: &PolyBatch) -> Result<(Keep, [A; 4])> {
        let t = self.ring(ring)?;
        let l = self.indices(&p.limbs)?;
        let args = [
            A::W(self.ptr(&t.mods)),
            A::W(self.ptr(&l)),
            A::U(p.limbs.len() as u32),
            A::U(p.n.trailing_zeros()),
        ];
        Ok((Keep(t, l), args))
    }

    fn binary(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch, op: u32) -> Result<()> {
        let opname = ["add", "sub", "mul"][op as usize];
        a.check_compatible(b, opname)?;
        check_ring(ring, a)?;
        let (_keep, la) = self.limb_args(ring, a)?;
        let total = words(a) as u64;
        let (pa, pb) = (self.bptr(a)?, self.bptr(b)?);
        let bc = (b.count == 1 && a.count != 1) as u32;
        self.launch_1d(
            "ew_binary",
            total,
            &[
                A::W(pa),
                A::W(pb),
                A::U(bc),
                A::U(op),
                la[0],
                la[1],
                la[2],
                la[3],
                A::W(total),
            ],
        )
    }

    fn scalar(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32], op: u32) -> Result<()> {
        let opname = ["mul_scalar", "add_scalar"][op as usize];
        let (w, ws): (Vec<u32>, Vec<u32>) = limb_scalars(opname, ring, a, s)?.into_iter().unzip();
        let (dw, dws) = (self.htod(&w)?, self.htod(&ws)?);
        let (_keep, la) = self.limb_args(ring, a)?;
        let total = words(a) as u64;
        self.launch_1d(
            "ew_scalar",
            total,
            &[
                A::W(self.bptr(a)?),
                A::W(self.ptr(&dw)),
                A::W(self.ptr(&dws)),
                A::U(op),
                la[0],
                la[1],
                la[2],
                la[3],
                A::W(total),
            ],
        )
    }
}

/// Keeps cached tables alive while their pointers are in use.
struct Keep(
    #[allow(dead_code)] Arc<RingTables>,
    #[allow(dead_code)] Arc<CudaSlice<u32>>,
);

fn words(p: &PolyBatch) -> usize {
    p.count * p.limbs.len() * p.n
}

/// Keeps freed device memory in the stream-ordered pool (allocations per operation are then
/// cheap) instead of returning it to the driver at every synchronization.
fn keep_freed_memory_pooled(ctx: &Arc<CudaContext>) {
    let mut pool: dsys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: out-parameter and a u64 attribute value, on a live device.
    unsafe {
        if dsys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            == dsys::cudaError_enum::CUDA_SUCCESS
        {
            let mut threshold = u64::MAX;
            let _ = dsys::cuMemPoolSetAttribute(
                pool,
                dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            );
        }
    }
}

/// Compiles the kernels for the device (CUBIN for sm_XY; PTX for compute_XY if NVRTC cannot
/// target the real architecture), through a disk cache keyed by source hash, NVRTC version
/// and architecture (`HETENSOR_CUDA_CACHE` = a directory, or `off`; default
/// `$XDG_CACHE_HOME/hetensor` or `~/.cache/hetensor`).
fn load_kernels(
    ctx: &Arc<CudaContext>,
    (major, minor): (i32, i32),
) -> Result<Arc<cudarc::driver::CudaModule>> {
    let src = compile::full_source();
    let ver = compile::nvrtc_version()?;
    let key = format!(
        "kernels-{:016x}-nvrtc{}.{}-sm{major}{minor}",
        compile::source_hash(&src),
        ver.0,
        ver.1
    );
    let dir = cache_dir();
    let load = |bytes: Vec<u8>, out: Output| {
        let ptx = match out {
            Output::Cubin => Ptx::from_binary(bytes),
            Output::Ptx => Ptx::from_src(String::from_utf8_lossy(&bytes).into_owned()),
        };
        ctx.load_module(ptx)
    };
    for out in [Output::Cubin, Output::Ptx] {
        let ext = if out == Output::Cubin { "cubin" } else { "ptx" };
        if let Some(d) = &dir {
            if let Ok(bytes) = std::fs::read(d.join(format!("{key}.{ext}"))) {
                if let Ok(m) = load(bytes, out) {
                    return Ok(m);
                }
            }
        }
    }
    let mut errors = Vec::new();
    for out in [Output::Cubin, Output::Ptx] {
        match compile::compile(&src, major, minor, out) {
            Ok(bytes) => match load(bytes.clone(), out) {
                Ok(m) => {
                    if let Some(d) = &dir {
                        let ext = if out == Output::Cubin { "cubin" } else { "ptx" };
                        let _ = std::fs::create_dir_all(d)
                            .and_then(|_| std::fs::write(d.join(format!("{key}.{ext}")), &bytes));
                    }
                    return Ok(m);
                }
                Err(e) => errors.push(format!("loading {out:?}: {e:?}")),
            },
            Err(e) => errors.push(format!("{out:?}: {e}")),
        }
    }
    Err(unavailable(format!(
        "could not build the kernels for sm_{major}{minor} with NVRTC {}.{}: {}",
        ver.0,
        ver.1,
        errors.join("; ")
    )))
}

fn cache_dir() -> Option<std::path::PathBuf> {
    match std::env::var("HETENSOR_CUDA_CACHE") {
        Ok(v) if v == "off" => None,
        Ok(v) if !v.is_empty() => Some(v.into()),
        _ => std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
            .map(|d| d.join("hetensor")),
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
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
        let data = self.htod(&words)?;
        Ok(self.wrap(data, limbs, count, n, repr))
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv)?;
        self.stream.synchronize().map_err(drv)
    }

    fn trace_counts(&self) -> Option<TraceCounts> {
        Some(self.trace.snapshot())
    }

    fn download(&self, p: &PolyBatch) -> Result<Vec<u32>> {
        let b = self.buf(p)?;
        if b.len == 0 {
            return Ok(Vec::new());
        }
        self.ctx.bind_to_thread().map_err(drv)?;
        Trace::add(&self.trace.download_bytes, 4 * b.len);
        // Waits for the stream: the one synchronization point of the backend.
        self.stream.clone_dtoh(&b.data.slice(0..b.len)).map_err(drv)
    }

    fn zeros(&self, limbs: Arc<[usize]>, count: usize, n: usize, repr: Repr) -> Result<PolyBatch> {
        self.ctx.bind_to_thread().map_err(drv)?;
        let len = count * limbs.len() * n;
        let data = self.stream.alloc_zeros::<u32>(len.max(1)).map_err(drv)?;
        self.trace.alloc(4 * len.max(1));
        self.trace.device_copy(4 * len.max(1));
        Ok(self.wrap(data, limbs, count, n, repr))
    }

    fn ntt_forward(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()> {
        check_ntt(p, true)?;
        self.ntt(ring, p, true)?;
        p.set_repr(Repr::Ntt);
        Ok(())
    }

    fn ntt_inverse(&self, ring: &RingContext, p: &mut PolyBatch) -> Result<()> {
        check_ntt(p, false)?;
        self.ntt(ring, p, false)?;
        p.set_repr(Repr::Coeff);
        Ok(())
    }

    fn add_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        self.binary(ring, a, b, 0)
    }

    fn sub_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        self.binary(ring, a, b, 1)
    }

    fn neg_assign(&self, ring: &RingContext, a: &mut PolyBatch) -> Result<()> {
        check_ring(ring, a)?;
        let (_keep, la) = self.limb_args(ring, a)?;
        let total = words(a) as u64;
        self.launch_1d(
            "ew_neg",
            total,
            &[A::W(self.bptr(a)?), la[0], la[1], la[2], la[3], A::W(total)],
        )
    }

    fn mul_assign(&self, ring: &RingContext, a: &mut PolyBatch, b: &PolyBatch) -> Result<()> {
        self.binary(ring, a, b, 2)
    }

    fn mul_acc(
        &self,
        ring: &RingContext,
        acc: &mut PolyBatch,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<()> {
        check_mul_acc(acc, a, b)?;
        check_ring(ring, acc)?;
        let (_keep, la) = self.limb_args(ring, acc)?;
        let total = words(acc) as u64;
        let abc = (a.count == 1 && acc.count != 1) as u32;
        let bbc = (b.count == 1 && acc.count != 1) as u32;
        self.launch_1d(
            "ew_mul_acc",
            total,
            &[
                A::W(self.bptr(acc)?),
                A::W(self.bptr(a)?),
                A::U(abc),
                A::W(self.bptr(b)?),
                A::U(bbc),
                la[0],
                la[1],
                la[2],
                la[3],
                A::W(total),
            ],
        )
    }

    fn mul_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()> {
        self.scalar(ring, a, s, 0)
    }

    fn linear_combinations(
        &self,
        ring: &RingContext,
        inputs: &[&PolyBatch],
        weights: &[u32],
        outputs: usize,
    ) -> Result<Vec<PolyBatch>> {
        let (first, _, ni) = super::check_linear_combinations(inputs, weights, outputs)?;
        let xs = inputs
            .iter()
            .map(|x| self.bptr(x))
            .collect::<Result<Vec<_>>>()?;
        check_ring(ring, first)?;
        let total = words(first);
        let outs: Vec<CudaSlice<u32>> = (0..outputs)
            .map(|_| self.alloc(total))
            .collect::<Result<_>>()?;
        let ys: Vec<u64> = outs.iter().map(|o| self.ptr(o)).collect();
        let (dxs, dys, dw) = (self.htod(&xs)?, self.htod(&ys)?, self.htod(weights)?);
        let (_keep, la) = self.limb_args(ring, first)?;
        self.launch_1d(
            "lincomb",
            total as u64,
            &[
                A::W(self.ptr(&dys)),
                A::W(self.ptr(&dxs)),
                A::W(self.ptr(&dw)),
                A::U(ni as u32),
                A::U(outputs as u32),
                la[0],
                la[1],
                la[2],
                la[3],
                A::W(total as u64),
            ],
        )?;
        Ok(outs
            .into_iter()
            .map(|o| self.wrap(o, first.limbs.clone(), first.count, first.n, first.repr))
            .collect())
    }

    fn tensor_product(
        &self,
        ring: &RingContext,
        a: &PolyBatch,
        b: &PolyBatch,
    ) -> Result<PolyBatch> {
        check_tensor_product(a, b)?;
        check_ring(ring, a)?;
        let w = a.poly_words();
        let out = self.alloc(3 * w)?;
        let (_keep, la) = self.limb_args(ring, a)?;
        self.launch_1d(
            "tensor_product",
            w as u64,
            &[
                A::W(self.ptr(&out)),
                A::W(self.bptr(a)?),
                A::W(self.bptr(b)?),
                la[0],
                la[1],
                la[2],
                la[3],
                A::W(w as u64),
            ],
        )?;
        Ok(self.wrap(out, a.limbs.clone(), 3, a.n, Repr::Ntt))
    }

    fn add_scalar_assign(&self, ring: &RingContext, a: &mut PolyBatch, s: &[u32]) -> Result<()> {
        self.scalar(ring, a, s, 1)
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
        let t = self.conv(conv)?;
        let (k, kt, n) = (p.limbs.len(), to.len(), p.n);
        let total = p.count * kt * n;
        let mut out = self.alloc(total)?;
        if k == 0 {
            // An empty source basis converts to zero (as on the CPU).
            self.trace.device_copy(4 * out.len());
            self.stream.memset_zeros(&mut out).map_err(drv)?;
        } else {
            let (po, pi) = (self.ptr(&out), self.bptr(p)?);
            self.convert_at(po, pi, &t, (k, kt), n, p.count, exact)?;
        }
        Ok(self.wrap(out, to, p.count, n, Repr::Coeff))
    }

    fn scale_and_round(
        &self,
        _ring: &RingContext,
        p: &PolyBatch,
        to: Arc<[usize]>,
        rounder: &ScaleRounder,
    ) -> Result<PolyBatch> {
        check_scale_and_round(p, &to, rounder)?;
        let t = self.rounder(rounder)?;
        let (kq, kc, n) = (rounder.from_q().len(), to.len(), p.n);
        let out = self.alloc(p.count * kc * n)?;
        let total = (p.count * n) as u64;
        if kc > 0 {
            self.launch_1d(
                "scale_round",
                total,
                &[
                    A::W(self.ptr(&out)),
                    A::W(self.bptr(p)?),
                    A::W(self.ptr(&t.q)),
                    A::W(self.ptr(&t.c)),
                    A::W(self.ptr(&t.fint)),
                    A::W(self.ptr(&t.theta)),
                    A::W(self.ptr(&t.lam)),
                    A::U(kq as u32),
                    A::U(kc as u32),
                    A::U(n.trailing_zeros()),
                    A::W(total),
                ],
            )?;
        }
        Ok(self.wrap(out, to, p.count, n, Repr::Coeff))
    }

    fn automorphism(&self, ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch> {
        check_automorphism(p, g, Repr::Coeff)?;
        check_ring(ring, p)?;
        let total = words(p);
        let out = self.alloc(total)?;
        let (_keep, la) = self.limb_args(ring, p)?;
        self.launch_1d(
            "automorphism",
            total as u64,
            &[
                A::W(self.ptr(&out)),
                A::W(self.bptr(p)?),
                la[0],
                la[1],
                la[2],
                la[3],
                A::U((g % (2 * p.n)) as u32),
                A::W(total as u64),
            ],
        )?;
        Ok(self.wrap(out, p.limbs.clone(), p.count, p.n, Repr::Coeff))
    }

    fn automorphism_ntt(&self, _ring: &RingContext, p: &PolyBatch, g: usize) -> Result<PolyBatch> {
        check_automorphism(p, g, Repr::Ntt)?;
        let map = self.ntt_map(p.n, g)?;
        let total = words(p);
        let out = self.alloc(total)?;
        self.launch_1d(
            "permute_limbs",
            total as u64,
            &[
                A::W(self.ptr(&out)),
                A::W(self.bptr(p)?),
                A::W(self.ptr(&map)),
                A::U(p.n.trailing_zeros()),
                A::W(total as u64),
            ],
        )?;
        Ok(self.wrap(out, p.limbs.clone(), p.count, p.n, Repr::Ntt))
    }

    fn select_limbs(&self, p: &PolyBatch, limbs: Arc<[usize]>) -> Result<PolyBatch> {
        let pos = limb_positions(p, &limbs)?;
        let n = p.n;
        let total = p.count * limbs.len() * n;
        let mut out = self.alloc(total)?;
        let src = &self.buf(p)?.data;
        let contiguous = pos.windows(2).all(|w| w[1] == w[0] + 1);
        if total == 0 {
        } else if p.count == 1 && contiguous {
            // One contiguous run of limbs: a plain copy.
            let start = pos[0] * n;
            self.ctx.bind_to_thread().map_err(drv)?;
            self.trace.device_copy(4 * total);
            self.stream
                .memcpy_dtod(
                    &src.slice(start..start + total),
                    &mut out.slice_mut(0..total),
                )
                .map_err(drv)?;
        } else {
            let dpos = self.indices(&pos)?;
            self.launch_1d(
                "gather_limbs",
                total as u64,
                &[
                    A::W(self.ptr(&out)),
                    A::W(self.ptr(src)),
                    A::W(self.ptr(&dpos)),
                    A::U(p.limbs.len() as u32),
                    A::U(limbs.len() as u32),
                    A::U(n.trailing_zeros()),
                    A::W(total as u64),
                ],
            )?;
        }
        Ok(self.wrap(out, limbs, p.count, n, p.repr))
    }

    fn slice_polys(&self, p: &PolyBatch, start: usize, len: usize) -> Result<PolyBatch> {
        check_slice(p, start, len)?;
        let w = p.poly_words();
        let mut out = self.alloc(len * w)?;
        if len * w > 0 {
            let src = &self.buf(p)?.data;
            self.ctx.bind_to_thread().map_err(drv)?;
            self.trace.device_copy(4 * len * w);
            self.stream
                .memcpy_dtod(
                    &src.slice(start * w..(start + len) * w),
                    &mut out.slice_mut(0..len * w),
                )
                .map_err(drv)?;
        }
        Ok(self.wrap(out, p.limbs.clone(), len, p.n, p.repr))
    }

    fn concat(&self, parts: &[&PolyBatch]) -> Result<PolyBatch> {
        let (first, count) = check_concat(parts)?;
        let w = first.poly_words();
        let mut out = self.alloc(count * w)?;
        self.ctx.bind_to_thread().map_err(drv)?;
        let mut off = 0;
        for p in parts {
            let len = p.count * w;
            if len > 0 {
                let src = &self.buf(p)?.data;
                self.trace.device_copy(4 * len);
                self.stream
                    .memcpy_dtod(&src.slice(0..len), &mut out.slice_mut(off..off + len))
                    .map_err(drv)?;
            }
            off += len;
        }
        Ok(self.wrap(out, first.limbs.clone(), count, first.n, first.repr))
    }

    fn mod_down(
        &self,
        ring: &RingContext,
        x: &PolyBatch,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        let (nk, nd, n, count) = (keep.len(), drop.len(), x.n, x.count);
        // The fused path needs `x` over `keep ++ drop`; anything else takes the reference.
        if x.repr != Repr::Ntt
            || nk == 0
            || nd == 0
            || count == 0
            || x.limbs.len() != nk + nd
            || x.limbs[..nk] != *keep
            || x.limbs[nk..] != *drop
        {
            return mod_down_reference(self, ring, x, keep, drop, conv);
        }
        check_ring(ring, x)?;
        // The dropped rows are read where they lie by the inverse NTT's first kernel.
        let tail = self.alloc(count * nd * n)?;
        let xp = self.bptr(x)?;
        let from = Tail::From {
            dst: self.ptr(&tail),
            src: xp + 4 * (nk * n) as u64,
            stride: nk + nd,
        };
        let out =
            self.mod_down_tail(ring, from, (xp, nk + nd, 0), (&keep, &drop), conv, count, n)?;
        Ok(self.wrap(out, keep, count, n, Repr::Ntt))
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
        check_ring(ring, d)?;
        let Some(t) = self.fused_ks_tables(ring, plan, keys)? else {
            return key_switch_reference(self, ring, d, keys, plan, onto);
        };
        let (n, nq, np) = (d.n, plan.q.len(), plan.p.len());
        // The ModDown's tail (the special limbs of both polynomials) first, then the head.
        let acc = self.alloc(2 * (nq + np) * n)?;
        let tail = self.ptr(&acc);
        let head = tail + 4 * (2 * np * n) as u64;
        let out = KsOut {
            head,
            tail,
            keep: nq,
            tail_inv: true,
        };
        self.ks_accumulate(
            ring,
            DigitSource::of(self, d, 0)?,
            keys,
            plan,
            &t,
            out,
            LiftSource::default(),
        )?;
        let add = onto.map(|c| self.bptr(c)).transpose()?.unwrap_or(0);
        let out = self.ks_mod_down(ring, (head, tail, add), (&plan.q, &plan.p), &plan.down, n)?;
        Ok(self.wrap(out, plan.q.clone(), 2, n, Repr::Ntt))
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
        check_ring(ring, d)?;
        let Some(t) = self.fused_ks_tables(ring, plan, keys)? else {
            return key_switch_ext_reference(self, ring, d, keys, plan, lift);
        };
        // The accumulator in the batch layout over `plan.qp`, `P·lift` added by the inner
        // product: the caller's ModDown (e.g. relinearize-and-rescale's, over `P·q_l`)
        // finishes it.
        let acc = self.alloc(2 * plan.qp.len() * d.n)?;
        let out = KsOut {
            head: self.ptr(&acc),
            tail: self.ptr(&acc),
            keep: plan.qp.len(),
            tail_inv: false,
        };
        self.ks_accumulate(
            ring,
            DigitSource::of(self, d, 0)?,
            keys,
            plan,
            &t,
            out,
            LiftSource::of(self, lift)?,
        )?;
        Ok(self.wrap(acc, plan.qp.clone(), 2, d.n, Repr::Ntt))
    }

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
        check_relinearize_mod_down(product, keys, plan, &keep, &drop)?;
        check_ring(ring, product)?;
        let Some(t) = self.fused_ks_tables(ring, plan, keys)? else {
            return relinearize_mod_down_reference(
                self, ring, product, keys, plan, keep, drop, conv,
            );
        };
        // c2 read in place; (c0, c1) lifted from the product.
        let c2 = DigitSource::of(self, product, 2)?;
        let lift = LiftSource::of(self, Some(product))?;
        self.relin_mod_down_fused(ring, (c2, lift), keys, plan, &t, (keep, drop), conv)
    }

    fn multiply_relinearize_mod_down(
        &self,
        ring: &RingContext,
        (a, b): (&PolyBatch, &PolyBatch),
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        keep: Arc<[usize]>,
        drop: Arc<[usize]>,
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        check_tensor_product(a, b)?;
        check_relinearize_layout(a, keys, plan, &keep, &drop)?;
        check_ring(ring, a)?;
        let Some(t) = self.fused_ks_tables(ring, plan, keys)? else {
            return multiply_relinearize_mod_down_reference(
                self,
                ring,
                (a, b),
                keys,
                plan,
                keep,
                drop,
                conv,
            );
        };
        // The tensor product is never written: a1·b1 is computed where ModUp's inverse NTT
        // and the key switch read it, (a0·b0, a0·b1 + a1·b0) where they are lifted.
        let c2 = DigitSource::product(self, a, b)?;
        let lift = LiftSource {
            ptr: self.bptr(a)?,
            count: 2,
            b: self.bptr(b)?,
        };
        self.relin_mod_down_fused(ring, (c2, lift), keys, plan, &t, (keep, drop), conv)
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
        let key_limbs = keys[0].limbs_arc();
        let Some(krow) = hoisted_key_rows(&qp, keys) else {
            return key_inner_hoisted_reference(self, ring, ups, keys, g, lift, p);
        };
        let (n, nl, nd) = (ups[0].n, qp.len(), ups.len());
        let nq = nl - p.len();
        let rt = self.ring(ring)?;
        let (krow, limbs) = (self.indices(&krow)?, self.indices(&qp)?);
        let lfac = self.cached(
            |c| &mut c.lifts,
            (
                qp.iter().map(|&l| ring.modulus(l).value()).collect(),
                p.iter().map(|&l| ring.modulus(l).value()).collect(),
            ),
            || Ok(Arc::new(self.htod(&lift_factors(ring, &qp, p))?)),
        )?;
        let map = g.map(|g| self.ntt_map(n, g)).transpose()?;
        let uptrs = ups
            .iter()
            .map(|u| self.bptr(u))
            .collect::<Result<Vec<_>>>()?;
        let kptrs = keys
            .iter()
            .map(|k| self.bptr(k))
            .collect::<Result<Vec<_>>>()?;
        let (up, kp) = (self.ptr_array(&uptrs)?, self.ptr_array(&kptrs)?);
        let (lp, nlift) = match lift {
            Some(x) => (self.bptr(x)?, x.count),
            None => (0, 0),
        };
        let total = (2 * nl * n) as u64;
        let acc = self.alloc(2 * nl * n)?;
        self.launch_counted(
            "ks_inner_hoisted",
            (grid_1d(total), BLOCK_1D, 0),
            &[
                A::W(self.ptr(&acc)),
                A::W(self.ptr(&up)),
                A::W(self.ptr(&kp)),
                A::W(self.ptr(&krow)),
                A::W(self.ptr(&rt.mods)),
                A::W(self.ptr(&limbs)),
                A::W(map.as_ref().map_or(0, |m| self.ptr(m))),
                A::W(lp),
                A::W(self.ptr(&lfac)),
                A::U(nlift as u32),
                A::U(nq as u32),
                A::U(nl as u32),
                A::U(nd as u32),
                A::U(key_limbs.len() as u32),
                A::U(n.trailing_zeros()),
                A::W(total),
            ],
            // acc written; per digit, its key rows and its extension read once; the lift once.
            total * (1 + nd as u64) + (nd * nl * n) as u64 + (nlift * nq * n) as u64,
        )?;
        Ok(self.wrap(acc, qp, 2, n, Repr::Ntt))
    }

    fn mod_up(
        &self,
        ring: &RingContext,
        d: &PolyBatch,
        plan: &KeySwitchPlan,
    ) -> Result<Vec<PolyBatch>> {
        let (nq, np) = (plan.q.len(), plan.p.len());
        let fused = d.repr == Repr::Ntt
            && d.count == 1
            && *d.limbs == *plan.q
            && np > 0
            && plan.qp.len() == nq + np
            && plan.qp[..nq] == *plan.q
            && plan.qp[nq..] == *plan.p;
        // The tables of a key over exactly `plan.qp` (ModUp reads no key rows).
        let tables = if fused {
            self.ks_tables(ring, plan, &plan.qp)?
        } else {
            None
        };
        let Some(t) = tables else {
            return mod_up_reference(self, ring, d, plan);
        };
        check_ring(ring, d)?;
        let (n, nl, nd) = (d.n, nq + np, plan.digits.len());
        let ext = self.mod_up_rows(
            ring,
            DigitSource::of(self, d, 0)?,
            plan,
            &t,
            RowsPass::Plain,
        )?;
        // Each digit's batch over `plan.qp`: its own limbs from `d`, the others from `ext`
        // (the sources `ntt_fwd_rows_ks` reads, from the same `lrow` table), all digits in one
        // launch.
        let outs = (0..nd)
            .map(|_| self.alloc(nl * n))
            .collect::<Result<Vec<_>>>()?;
        let optrs: Vec<u64> = outs.iter().map(|o| self.ptr(o)).collect();
        let op = self.ptr_array(&optrs)?;
        let total = (nd * nl * n) as u64;
        self.launch_counted(
            "mod_up_gather",
            (grid_1d(total), BLOCK_1D, 0),
            &[
                A::W(self.ptr(&op)),
                A::W(self.bptr(d)?),
                A::W(self.ptr(&ext)),
                A::W(self.ptr(&t.lrow)),
                A::U(nd as u32),
                A::U(nl as u32),
                A::U(n.trailing_zeros()),
                A::W(total),
            ],
            2 * total,
        )?;
        Ok(outs
            .into_iter()
            .map(|o| self.wrap(o, plan.qp.clone(), 1, n, Repr::Ntt))
            .collect())
    }

    fn concat_limbs(&self, a: &PolyBatch, b: &PolyBatch) -> Result<PolyBatch> {
        let limbs = check_concat_limbs(a, b)?;
        let total = a.count * limbs.len() * a.n;
        let out = self.alloc(total)?;
        self.launch_1d(
            "concat_limbs",
            total as u64,
            &[
                A::W(self.ptr(&out)),
                A::W(self.bptr(a)?),
                A::W(self.bptr(b)?),
                A::U(a.limbs.len() as u32),
                A::U(b.limbs.len() as u32),
                A::U(a.n.trailing_zeros()),
                A::W(total as u64),
            ],
        )?;
        Ok(self.wrap(out, limbs, a.count, a.n, a.repr))
    }
}

impl CudaBackend {
    fn ntt(&self, ring: &RingContext, p: &mut PolyBatch, forward: bool) -> Result<()> {
        check_ring(ring, p)?;
        self.ntt_at(ring, self.bptr(p)?, &p.limbs, p.count, p.n, forward)
    }

    /// NTTs of `count` polynomials over `limbs` stored from device address `data`.
    fn ntt_at(
        &self,
        ring: &RingContext,
        data: u64,
        limbs: &[usize],
        count: usize,
        n: usize,
        forward: bool,
    ) -> Result<()> {
        self.ntt_launch(ring, data, limbs, count, n, forward, None, RowsPass::Plain)
    }

    /// The inverse NTT of `count` polynomials over `limbs` from `src` into `data` (another
    /// batch of the same layout, left unchanged), without copying it first; of `src · src2`
    /// word by word when `src2` is not 0.
    fn intt_from(
        &self,
        ring: &RingContext,
        (data, src, src2): (u64, u64, u64),
        limbs: &[usize],
        count: usize,
        n: usize,
    ) -> Result<()> {
        self.ntt_launch_from(
            ring,
            (data, src, src2, limbs.len()),
            limbs,
            count,
            n,
            false,
            None,
            RowsPass::Plain,
        )
    }

    /// [`Self::ntt_at`]; forward only: with `conv = Some((args, source words))` the input is
    /// converted on load (`ntt_fwd_cols_conv` with those extra arguments: in, desc, tab,
    /// src_stride; a `conv_rows` launch writing `data` first where N ≤ 2048), and `rows`
    /// says how the transform ends ([`RowsPass`]; inverse: `Skip` leaves out the rows kernel,
    /// which runs first, and with N ≤ 2048 the whole transform).
    #[allow(clippy::too_many_arguments)]
    fn ntt_launch(
        &self,
        ring: &RingContext,
        data: u64,
        limbs: &[usize],
        count: usize,
        n: usize,
        forward: bool,
        conv: Option<([A; 4], u64)>,
        rows: RowsPass,
    ) -> Result<()> {
        let rows_in_place = (data, data, 0, limbs.len());
        self.ntt_launch_from(ring, rows_in_place, limbs, count, n, forward, conv, rows)
    }

    /// [`Self::ntt_launch`] whose inverse rows kernel reads `src` (`data`: in place), times
    /// `src2` unless that is 0; `src` holds `src_stride` rows per polynomial, of which the
    /// transform reads the first `limbs.len()`.
    #[allow(clippy::too_many_arguments)]
    fn ntt_launch_from(
        &self,
        ring: &RingContext,
        (data, src, src2, src_stride): (u64, u64, u64, usize),
        limbs: &[usize],
        count: usize,
        n: usize,
        forward: bool,
        conv: Option<([A; 4], u64)>,
        rows: RowsPass,
    ) -> Result<()> {
        let ntts = (count * limbs.len()) as u64;
        if ntts == 0 {
            return Ok(());
        }
        let t = self.ring(ring)?;
        let l = self.indices(limbs)?;
        let (tw, tws) = if forward {
            (&t.psi, &t.psi_s)
        } else {
            (&t.ipsi, &t.ipsi_s)
        };
        let ptrs = NttPtrs {
            data,
            src,
            src2,
            src_stride: src_stride as u32,
            mods: self.ptr(&t.mods),
            limbs: self.ptr(&l),
            tw: self.ptr(tw),
            tws: self.ptr(tws),
            ninv: self.ptr(&t.ninv),
        };
        let mut launches = ntt_launches(n, ntts, limbs.len() as u32, forward, ptrs)?;
        match rows {
            RowsPass::Plain => {}
            RowsPass::ModDown(extra) => {
                if let Some(last) = launches.last_mut() {
                    last.name = "ntt_fwd_rows_moddown";
                    last.args.extend(extra);
                }
            }
            RowsPass::Skip if forward => {
                launches.pop();
            }
            RowsPass::Skip => {
                if !launches.is_empty() {
                    launches.remove(0);
                }
            }
        }
        let mut src_words = 0;
        if let Some((extra, words)) = conv {
            src_words = words;
            match launches.first_mut() {
                Some(first) if first.name == "ntt_fwd_cols" => {
                    first.name = "ntt_fwd_cols_conv";
                    first.args.extend(extra);
                }
                _ => {
                    let [inp, desc, tab, stride] = extra;
                    let total = ntts << n.trailing_zeros();
                    self.launch_counted(
                        "conv_rows",
                        (grid_1d(total), BLOCK_1D, 0),
                        &[
                            A::W(data),
                            inp,
                            A::W(ptrs.mods),
                            A::W(ptrs.limbs),
                            desc,
                            tab,
                            A::U(limbs.len() as u32),
                            stride,
                            A::U(n.trailing_zeros()),
                            A::W(total),
                        ],
                        total + std::mem::take(&mut src_words),
                    )?;
                }
            }
        }
        for l in launches {
            let words =
                kernel_words(l.name, l.grid, l.smem, &l.args) + std::mem::take(&mut src_words);
            self.launch_counted(l.name, (l.grid, l.block, l.smem), &l.args, words)?;
        }
        Ok(())
    }

    /// `base_convert` of `count` polynomials of `k` limbs at `inp` into `kt` limbs at `out`.
    #[allow(clippy::too_many_arguments)]
    fn convert_at(
        &self,
        out: u64,
        inp: u64,
        t: &ConvTables,
        (k, kt): (usize, usize),
        n: usize,
        count: usize,
        exact: bool,
    ) -> Result<()> {
        let total = (count * kt * n) as u64;
        self.launch_1d(
            "base_convert",
            total,
            &[
                A::W(out),
                A::W(inp),
                A::W(self.ptr(&t.from)),
                A::W(self.ptr(&t.to)),
                A::W(self.ptr(&t.bhi)),
                A::W(self.ptr(&t.bhc)),
                A::W(self.ptr(&t.bmc)),
                A::W(self.ptr(&t.frac)),
                A::U(k as u32),
                A::U(kt as u32),
                A::U(n.trailing_zeros()),
                A::U(exact as u32),
                A::W(total),
            ],
        )
    }

    /// ModDown's scaling constants `([P^{-1}]_{q_l}, shoup)` for `keep`, cached.
    fn factors(
        &self,
        ring: &RingContext,
        keep: &[usize],
        drop: &[usize],
    ) -> Result<Arc<CudaSlice<u32>>> {
        let vals = |ls: &[usize]| ls.iter().map(|&l| ring.modulus(l).value()).collect();
        self.cached(
            |c| &mut c.factors,
            (vals(keep), vals(drop)),
            || {
                let words: Vec<u32> = mod_down_factors(ring, keep, drop)
                    .iter()
                    .zip(keep)
                    .flat_map(|(&w, &l)| {
                        let m = ring.modulus(l);
                        let w = w % m.value();
                        [w, m.shoup(w)]
                    })
                    .collect();
                Ok(Arc::new(self.htod(&words)?))
            },
        )
    }

    /// ModDown from its tail: the `drop` rows (NTT form, `count` polynomials of `drop.len()`
    /// rows, in the batch at `tail.dst`; see [`Tail`]) are transformed back, then converted
    /// exactly to `keep` on load by the forward NTT, whose rows kernel writes
    /// `out = (x − lifted)·[P^{-1}]`, x's row `(c, l)` at `x + (c·xstride + l)·N` words, plus the
    /// batch at `add` (0: none) of out's layout.
    #[allow(clippy::too_many_arguments)]
    fn mod_down_tail(
        &self,
        ring: &RingContext,
        tail: Tail,
        (x, xstride, add): (u64, usize, u64),
        (keep, drop): (&[usize], &[usize]),
        conv: &BaseConverter,
        count: usize,
        n: usize,
    ) -> Result<CudaSlice<u32>> {
        if conv.from().len() != drop.len() || conv.to().len() != keep.len() {
            return Err(Error::Shape(
                "mod_down: converter does not match the bases".into(),
            ));
        }
        let (tail, from) = match tail {
            Tail::RowsDone(t) => (t, None),
            Tail::From { dst, src, stride } => (dst, Some((src, stride))),
        };
        match from {
            None => self.ntt_launch(ring, tail, drop, count, n, false, None, RowsPass::Skip)?,
            Some((src, stride)) => self.ntt_launch_from(
                ring,
                (tail, src, 0, stride),
                drop,
                count,
                n,
                false,
                None,
                RowsPass::Plain,
            )?,
        }
        let t = self.down_tables(conv)?;
        let f = self.factors(ring, keep, drop)?;
        // The conversion's output: written only by the columns kernel's stages (or by
        // conv_rows where N ≤ 2048), never as a separate batch.
        let lifted = self.alloc(count * keep.len() * n)?;
        let out = self.alloc(count * keep.len() * n)?;
        let conv_args = [
            A::W(tail),
            A::W(self.ptr(&t.desc)),
            A::W(self.ptr(&t.tab)),
            A::U(drop.len() as u32),
        ];
        let moddown = [
            A::W(self.ptr(&out)),
            A::W(x),
            A::U(xstride as u32),
            A::W(self.ptr(&f)),
            A::W(add),
        ];
        let src_words = (count * drop.len() * n) as u64;
        let lp = self.ptr(&lifted);
        self.ntt_launch(
            ring,
            lp,
            keep,
            count,
            n,
            true,
            Some((conv_args, src_words)),
            RowsPass::ModDown(moddown),
        )?;
        Ok(out)
    }

    /// ModDown's conversion tables for `conv` (drop → keep), cached.
    fn down_tables(&self, conv: &BaseConverter) -> Result<Arc<ConvRows>> {
        self.cached(
            |c| &mut c.downs,
            conv_key(conv),
            || {
                let (desc, tab) = down_table_words(conv);
                Ok(Arc::new(ConvRows {
                    desc: self.htod(&desc)?,
                    tab: self.htod(&tab)?,
                }))
            },
        )
    }

    /// A cached device array holding these device pointers (content-keyed: the same
    /// pointers always give an array with the same words).
    fn ptr_array(&self, ptrs: &[u64]) -> Result<Arc<CudaSlice<u64>>> {
        let mut c = self.caches.lock().expect("cuda cache poisoned");
        if let Some(t) = c.ptrs.get(ptrs) {
            return Ok(t.clone());
        }
        if c.ptrs.len() >= 4096 {
            c.ptrs.clear();
        }
        let t = Arc::new(self.htod(ptrs)?);
        c.ptrs.insert(ptrs.to_vec(), t.clone());
        Ok(t)
    }

    /// The key-switching tables of `plan` for keys over `key_limbs`, cached; `None` when the
    /// plan's layout is not one the fused kernels handle ([`ks_table_words`]).
    /// The fused key switch's tables, or `None` when the plan's bases are not laid out as it
    /// needs (`plan.qp` = `plan.q ++ plan.p`, special primes present, every key digit over the
    /// same limbs): the caller then runs the reference composition.
    fn fused_ks_tables(
        &self,
        ring: &RingContext,
        plan: &KeySwitchPlan,
        keys: &[&PolyBatch],
    ) -> Result<Option<Arc<KsTables>>> {
        let (nq, np) = (plan.q.len(), plan.p.len());
        let key_limbs = keys[0].limbs_arc();
        if np == 0
            || plan.qp.len() != nq + np
            || plan.qp[..nq] != *plan.q
            || plan.qp[nq..] != *plan.p
            || keys.iter().any(|k| k.limbs != key_limbs)
        {
            return Ok(None);
        }
        self.ks_tables(ring, plan, &key_limbs)
    }

    /// ModUp's new rows for every digit (`t.ext_primes`, digit by digit): one inverse NTT of
    /// `d`, then one forward NTT over all digits' new limbs that converts on load, ended as
    /// `rows` says (`RowsPass::Skip`: before the stages `ntt_fwd_rows_ks` runs on read). 4
    /// launches (3 with `Skip`).
    fn mod_up_rows(
        &self,
        ring: &RingContext,
        d: DigitSource,
        plan: &KeySwitchPlan,
        t: &KsTables,
        rows: RowsPass,
    ) -> Result<CudaSlice<u32>> {
        let (n, nq) = (d.n, plan.q.len());
        // The inverse NTT reads d where it lies (e.g. c2 inside a size-3 product), no copy.
        let coeff = self.alloc(nq * n)?;
        self.intt_from(ring, (self.ptr(&coeff), d.ptr, d.ptr2), &plan.q, 1, n)?;
        let ext = self.alloc(t.rows * n)?;
        let conv_args = [
            A::W(self.ptr(&coeff)),
            A::W(self.ptr(&t.up.desc)),
            A::W(self.ptr(&t.up.tab)),
            A::U(0),
        ];
        let ep = self.ptr(&ext);
        let src_words = (nq * n) as u64;
        self.ntt_launch(
            ring,
            ep,
            &t.ext_primes,
            1,
            n,
            true,
            Some((conv_args, src_words)),
            rows,
        )?;
        Ok(ext)
    }

    /// Key switching up to its ModDown, every digit per launch: ModUp (one inverse NTT of `d`,
    /// then the first stages of one forward NTT over all digits' new limbs, converting on
    /// load) and `ntt_fwd_rows_ks`, which runs that NTT's last stages on read and the key
    /// inner product (key digits read in place, `P·lift` added) into `out` (see [`KsOut`]).
    /// 4 launches.
    #[allow(clippy::too_many_arguments)] // the key switch's operands and the output layout
    fn ks_accumulate(
        &self,
        ring: &RingContext,
        d: DigitSource,
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        t: &KsTables,
        out: KsOut,
        lift: LiftSource,
    ) -> Result<()> {
        let (n, nq, np, nd) = (d.n, plan.q.len(), plan.p.len(), plan.digits.len());
        let nqp = nq + np;
        if out.keep > nqp {
            return Err(Error::Shape(format!(
                "key switching: {} kept rows of {nqp}",
                out.keep
            )));
        }
        let key_limbs = keys[0].limbs.len();
        let rt = self.ring(ring)?;
        let ext = self.mod_up_rows(ring, d, plan, t, RowsPass::Skip)?;
        let kptrs = keys
            .iter()
            .map(|k| self.bptr(k))
            .collect::<Result<Vec<_>>>()?;
        let kp = self.ptr_array(&kptrs)?;
        let g = NttGeometry::new(n)?;
        let (grid, block, smem) = g.rows_launch(nqp as u64)?;
        let words = (nqp * n) as u64;
        self.launch_counted(
            "ntt_fwd_rows_ks",
            (grid, block, 3 * smem),
            &[
                A::W(out.head),
                A::W(out.tail),
                A::W(d.ptr),
                A::W(d.ptr2),
                A::W(self.ptr(&ext)),
                A::W(self.ptr(&kp)),
                A::W(self.ptr(&t.lrow)),
                A::W(self.ptr(&rt.mods)),
                A::W(self.ptr(&rt.psi)),
                A::W(self.ptr(&rt.psi_s)),
                A::W(self.ptr(&rt.ipsi)),
                A::W(self.ptr(&rt.ipsi_s)),
                A::W(self.ptr(&rt.ninv)),
                A::W(lift.ptr),
                A::W(lift.b),
                A::W(self.ptr(&t.lift_factors)),
                A::U(lift.count as u32),
                A::U(nq as u32),
                A::U(nqp as u32),
                A::U(nd as u32),
                A::U(key_limbs as u32),
                A::U(out.keep as u32),
                A::U(out.tail_inv as u32),
                A::U(n.trailing_zeros()),
                A::U(g.log_n2),
            ],
            // Per digit, its limb of every row read once (from ext or d; d's own limbs twice
            // when they are a product) and its key's two polynomials; the lifted polynomials
            // once (both operands' two when they are a tensor product); the accumulator written.
            words * (nd as u64 * 3 + 2) + ((lift.words() + (d.ptr2 != 0) as usize) * nq * n) as u64,
        )
    }

    /// Relinearization finished by one ModDown, fused: `c2` and the lifted `(c0, c1)` as the
    /// sources give them; the rows the ModDown drops go to their own batch with the inverse
    /// NTT's first kernel done. 7 launches at N > 2048, no copies.
    #[allow(clippy::too_many_arguments)]
    fn relin_mod_down_fused(
        &self,
        ring: &RingContext,
        (c2, lift): (DigitSource, LiftSource),
        keys: &[&PolyBatch],
        plan: &KeySwitchPlan,
        t: &KsTables,
        (keep, drop): (Arc<[usize]>, Arc<[usize]>),
        conv: &BaseConverter,
    ) -> Result<PolyBatch> {
        let (n, nk, nd) = (c2.n, keep.len(), drop.len());
        let (head, tail) = (self.alloc(2 * nk * n)?, self.alloc(2 * nd * n)?);
        let (hp, tp) = (self.ptr(&head), self.ptr(&tail));
        let out = KsOut {
            head: hp,
            tail: tp,
            keep: nk,
            tail_inv: true,
        };
        self.ks_accumulate(ring, c2, keys, plan, t, out, lift)?;
        let out = self.ks_mod_down(ring, (hp, tp, 0), (&keep, &drop), conv, n)?;
        Ok(self.wrap(out, keep, 2, n, Repr::Ntt))
    }

    /// A fused key switch's ModDown from `ntt_fwd_rows_ks`'s output: `head` (count 2 × `keep`
    /// rows) and `tail` (2 × `drop` rows, its inverse rows stages done), plus `add` (0: none).
    fn ks_mod_down(
        &self,
        ring: &RingContext,
        (head, tail, add): (u64, u64, u64),
        (keep, drop): (&[usize], &[usize]),
        conv: &BaseConverter,
        n: usize,
    ) -> Result<CudaSlice<u32>> {
        self.mod_down_tail(
            ring,
            Tail::RowsDone(tail),
            (head, keep.len(), add),
            (keep, drop),
            conv,
            2,
            n,
        )
    }

    fn ks_tables(
        &self,
        ring: &RingContext,
        plan: &KeySwitchPlan,
        key_limbs: &[usize],
    ) -> Result<Option<Arc<KsTables>>> {
        let mut layout = vec![plan.q.to_vec(), plan.p.to_vec(), key_limbs.to_vec()];
        layout.extend(plan.digits.iter().map(|d| d.limbs.to_vec()));
        let key = (
            (ring.n(), ring.moduli().iter().map(|m| m.value()).collect()),
            layout,
        );
        let mut c = self.caches.lock().expect("cuda cache poisoned");
        if let Some(t) = c.ks.get(&key) {
            return Ok(Some(t.clone()));
        }
        let Some(w) = ks_table_words(plan, key_limbs) else {
            return Ok(None);
        };
        let t = Arc::new(KsTables {
            up: ConvRows {
                desc: self.htod(&w.desc)?,
                tab: self.htod(&w.tab)?,
            },
            rows: w.ext_primes.len(),
            ext_primes: w.ext_primes,
            lrow: self.htod(&w.lrow)?,
            lift_factors: self.htod(&lift_factors(ring, &plan.qp, &plan.p))?,
        });
        c.ks.insert(key, t.clone());
        Ok(Some(t))
    }
}
