//! Every CUDA kernel, compiled unchanged as host C++ (`kernels/host/`, feature `cuda-emu`) and
//! launched with the CUDA backend's grid/block/shared-memory sizes and tables, returns the CPU
//! backend's words at N = 2^10 … 2^16. No GPU is needed: blocks with barriers run their threads
//! as fibers that the emulator resumes in forward, reverse and shuffled orders after every
//! `__syncthreads()`, so a missing barrier, a wrong twiddle index or a wrong argument shows up
//! as a different word. The NTT launches are the backend's own (`ntt_launches`); the other
//! kernels' argument lists mirror `src/backend/cuda/mod.rs` op by op.
#![cfg(feature = "cuda-emu")]

use hetensor::backend::cuda::compile::KERNEL_NAMES;
use hetensor::backend::cuda::launch::{automorphism_ntt_map, grid_1d, BLOCK_1D};
use hetensor::backend::cuda::{
    conv_table_words, emu, mod_words, ntt_launches, ring_table_words, round_table_words, KernelArg,
    Launch, NttPtrs,
};
use hetensor::backend::{limb_scalars, Backend, CpuBackend, PolyBatch, Repr};
use hetensor::math::primes::ntt_primes;
use hetensor::math::{BaseConverter, Modulus, RingContext, ScaleRounder};

use KernelArg::{U, W};

const LOG_NS: std::ops::RangeInclusive<u32> = 10..=16;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Degree n with 30-bit primes (0..5), 24-bit (5, 6) and 29-bit (7, 8): every reduction branch
/// of base conversion and scale-and-round.
fn ring(n: usize) -> RingContext {
    let mut ps = ntt_primes(30, 2 * n as u64, 5, &[]).unwrap();
    ps.extend(ntt_primes(24, 2 * n as u64, 2, &ps).unwrap());
    ps.extend(ntt_primes(29, 2 * n as u64, 2, &ps).unwrap());
    RingContext::new(n, &ps).unwrap()
}

fn random_words(rng: &mut Rng, ring: &RingContext, limbs: &[usize], count: usize) -> Vec<u32> {
    let mut v = Vec::with_capacity(count * limbs.len() * ring.n());
    for _ in 0..count {
        for &l in limbs {
            let q = ring.modulus(l).value() as u64;
            v.extend((0..ring.n()).map(|_| (rng.next() % q) as u32));
        }
    }
    v
}

fn upload(words: &[u32], limbs: &[usize], count: usize, n: usize, repr: Repr) -> PolyBatch {
    CpuBackend::new()
        .upload(words.to_vec(), limbs.into(), count, n, repr)
        .unwrap()
}

fn words(p: &PolyBatch) -> Vec<u32> {
    CpuBackend::new().download(p).unwrap()
}

/// A host address as a kernel's pointer argument.
fn p<T>(v: &[T]) -> KernelArg {
    W(v.as_ptr() as u64)
}
fn pm<T>(v: &mut [T]) -> KernelArg {
    W(v.as_mut_ptr() as u64)
}
fn idx(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&i| i as u32).collect()
}

/// The backend's 1-D grid-stride launch (`CudaBackend::launch_1d`).
fn run_1d(name: &'static str, total: u64, args: Vec<KernelArg>) {
    assert!(total > 0);
    run(Launch {
        name,
        grid: grid_1d(total),
        block: BLOCK_1D,
        smem: 0,
        args,
    });
}

fn run(l: Launch) {
    // SAFETY: every pointer argument is a live host vector of the size the kernel indexes.
    if let Err(e) = unsafe { emu::launch(&l) } {
        panic!("{} (grid {}, block {}): {e}", l.name, l.grid, l.block);
    }
}

#[track_caller]
fn same(want: &[u32], got: &[u32], what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: length");
    if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
        let bad = (0..want.len()).filter(|&i| want[i] != got[i]).count();
        panic!(
            "{what}: {bad} words differ, first at {i}: cpu {} emulated {}",
            want[i], got[i]
        );
    }
}

#[test]
fn every_backend_kernel_is_emulated_with_pointer_and_u32_parameters() {
    for name in KERNEL_NAMES {
        let params = emu::kernel_params(name).unwrap_or_else(|| panic!("{name} not emulated"));
        assert!(!params.is_empty() && params.iter().all(|&s| s == 4 || s == 8));
    }
    assert!(emu::kernel_params("no_such_kernel").is_none());
    // A wrong argument list is refused before anything runs.
    let bad = Launch {
        name: "ew_neg",
        grid: 1,
        block: 1,
        smem: 0,
        args: vec![U(0); 6],
    };
    // SAFETY: refused before the kernel reads any argument.
    assert!(unsafe { emu::launch(&bad) }.is_err());
}

/// Forward then inverse NTT of a random batch (non-contiguous limb list, three prime sizes):
/// N ≤ 2048 runs the single rows kernel, larger N the columns + rows kernels.
#[test]
fn ntt_forward_and_inverse() {
    let cpu = CpuBackend::new();
    let mut rng = Rng(1);
    for log_n in LOG_NS {
        let n = 1usize << log_n;
        let r = ring(n);
        let t = ring_table_words(&r);
        let (limbs, count) = (vec![7usize, 0, 5], 2usize);
        let nl = limbs.len() as u32;
        let ntts = (count * limbs.len()) as u64;
        let dl = idx(&limbs);
        let x = random_words(&mut rng, &r, &limbs, count);

        let mut c = upload(&x, &limbs, count, n, Repr::Coeff);
        cpu.ntt_forward(&r, &mut c).unwrap();
        let mut d = x.clone();
        let ptrs = |data: &mut [u32], fwd: bool| NttPtrs {
            data: data.as_mut_ptr() as u64,
            src: data.as_mut_ptr() as u64,
            src2: 0,
            src_stride: nl,
            mods: t.mods.as_ptr() as u64,
            limbs: dl.as_ptr() as u64,
            tw: if fwd { &t.psi } else { &t.ipsi }.as_ptr() as u64,
            tws: if fwd { &t.psi_s } else { &t.ipsi_s }.as_ptr() as u64,
            ninv: t.ninv.as_ptr() as u64,
        };
        let fwd = ntt_launches(n, ntts, nl, true, ptrs(&mut d, true)).unwrap();
        assert_eq!(fwd.len(), if log_n > 11 { 2 } else { 1 });
        fwd.into_iter().for_each(run);
        same(&words(&c), &d, &format!("ntt_forward N=2^{log_n}"));

        // Inverse of an independent random NTT-domain batch, then of the forward output.
        let y = random_words(&mut rng, &r, &limbs, count);
        for (input, what) in [(y, "random"), (d.clone(), "forward output")] {
            let mut c = upload(&input, &limbs, count, n, Repr::Ntt);
            cpu.ntt_inverse(&r, &mut c).unwrap();
            let mut e = input;
            ntt_launches(n, ntts, nl, false, ptrs(&mut e, false))
                .unwrap()
                .into_iter()
                .for_each(run);
            same(&words(&c), &e, &format!("ntt_inverse N=2^{log_n} ({what})"));
        }
        // Out of place (ModUp reading c2 from a size-3 product): the rows kernel reads `src`,
        // which stays as it was; every launch writes only the poisoned output batch.
        let y = random_words(&mut rng, &r, &limbs, count);
        let mut c = upload(&y, &limbs, count, n, Repr::Ntt);
        cpu.ntt_inverse(&r, &mut c).unwrap();
        let mut e = vec![0xdead_beef_u32; y.len()];
        let mut p = ptrs(&mut e, false);
        p.src = y.as_ptr() as u64;
        let before = y.clone();
        ntt_launches(n, ntts, nl, false, p)
            .unwrap()
            .into_iter()
            .for_each(run);
        same(
            &words(&c),
            &e,
            &format!("ntt_inverse out of place N=2^{log_n}"),
        );
        assert_eq!(y, before, "the out-of-place inverse wrote its source");
        // Of a word-wise product computed on load (ModUp of the tensor product's a1·b1).
        let z = random_words(&mut rng, &r, &limbs, count);
        let (mut c, zc) = (
            upload(&y, &limbs, count, n, Repr::Ntt),
            upload(&z, &limbs, count, n, Repr::Ntt),
        );
        cpu.mul_assign(&r, &mut c, &zc).unwrap();
        cpu.ntt_inverse(&r, &mut c).unwrap();
        let mut e = vec![0xdead_beef_u32; y.len()];
        let mut p = ptrs(&mut e, false);
        (p.src, p.src2) = (y.as_ptr() as u64, z.as_ptr() as u64);
        ntt_launches(n, ntts, nl, false, p)
            .unwrap()
            .into_iter()
            .for_each(run);
        same(
            &words(&c),
            &e,
            &format!("ntt_inverse of a product N=2^{log_n}"),
        );
        same(
            &x,
            &{
                let mut e = d;
                ntt_launches(n, ntts, nl, false, ptrs(&mut e, false))
                    .unwrap()
                    .into_iter()
                    .for_each(run);
                e
            },
            &format!("inverse(forward(x)) = x, N=2^{log_n}"),
        );
    }
}

/// ew_binary (add/sub/mul, with and without broadcast), ew_neg, ew_mul_acc (either operand
/// broadcast), ew_scalar (Shoup multiply, add).
#[test]
fn elementwise_kernels() {
    let cpu = CpuBackend::new();
    let mut rng = Rng(2);
    for log_n in LOG_NS {
        let n = 1usize << log_n;
        let r = ring(n);
        let t = ring_table_words(&r);
        let (limbs, count) = (vec![6usize, 1, 8], 3usize);
        let (dl, nl) = (idx(&limbs), limbs.len() as u32);
        let total = (count * limbs.len() * n) as u64;
        let a = random_words(&mut rng, &r, &limbs, count);
        let ca = upload(&a, &limbs, count, n, Repr::Ntt);
        for bcount in [count, 1] {
            let b = random_words(&mut rng, &r, &limbs, bcount);
            let cb = upload(&b, &limbs, bcount, n, Repr::Ntt);
            let bc = (bcount == 1) as u32;
            for op in 0..3u32 {
                let mut c = ca.clone();
                match op {
                    0 => cpu.add_assign(&r, &mut c, &cb),
                    1 => cpu.sub_assign(&r, &mut c, &cb),
                    _ => cpu.mul_assign(&r, &mut c, &cb),
                }
                .unwrap();
                let mut d = a.clone();
                run_1d(
                    "ew_binary",
                    total,
                    vec![
                        pm(&mut d),
                        p(&b),
                        U(bc),
                        U(op),
                        p(&t.mods),
                        p(&dl),
                        U(nl),
                        U(log_n),
                        W(total),
                    ],
                );
                same(
                    &words(&c),
                    &d,
                    &format!("ew_binary op {op} bcast {bc} N=2^{log_n}"),
                );
                // The CPU's one-pass out-of-place sum and difference.
                if op < 2 {
                    let fresh = cpu.add_new(&r, &ca, &cb, op == 1).unwrap();
                    same(
                        &words(&fresh),
                        &d,
                        &format!("CPU add_new op {op} bcast {bc} N=2^{log_n}"),
                    );
                }
            }
            // mul_acc with b broadcast, then with a broadcast (operands swapped).
            let acc = random_words(&mut rng, &r, &limbs, count);
            for swap in [false, true] {
                let mut c = upload(&acc, &limbs, count, n, Repr::Ntt);
                let (x, y, cx, cy) = if swap {
                    (&b, &a, &cb, &ca)
                } else {
                    (&a, &b, &ca, &cb)
                };
                cpu.mul_acc(&r, &mut c, cx, cy).unwrap();
                let xb = (cx.count() == 1 && count != 1) as u32;
                let yb = (cy.count() == 1 && count != 1) as u32;
                let mut d = acc.clone();
                run_1d(
                    "ew_mul_acc",
                    total,
                    vec![
                        pm(&mut d),
                        p(x),
                        U(xb),
                        p(y),
                        U(yb),
                        p(&t.mods),
                        p(&dl),
                        U(nl),
                        U(log_n),
                        W(total),
                    ],
                );
                same(
                    &words(&c),
                    &d,
                    &format!("ew_mul_acc bcast {xb}{yb} N=2^{log_n}"),
                );
            }
        }
        let mut c = ca.clone();
        cpu.neg_assign(&r, &mut c).unwrap();
        let mut d = a.clone();
        run_1d(
            "ew_neg",
            total,
            vec![pm(&mut d), p(&t.mods), p(&dl), U(nl), U(log_n), W(total)],
        );
        same(&words(&c), &d, &format!("ew_neg N=2^{log_n}"));

        let s: Vec<u32> = (0..limbs.len()).map(|_| rng.next() as u32).collect();
        for op in 0..2u32 {
            let mut c = ca.clone();
            let name = ["mul_scalar", "add_scalar"][op as usize];
            let (w, ws): (Vec<u32>, Vec<u32>) =
                limb_scalars(name, &r, &c, &s).unwrap().into_iter().unzip();
            if op == 0 {
                cpu.mul_scalar_assign(&r, &mut c, &s).unwrap();
            } else {
                cpu.add_scalar_assign(&r, &mut c, &s).unwrap();
            }
            let mut d = a.clone();
            run_1d(
                "ew_scalar",
                total,
                vec![
                    pm(&mut d),
                    p(&w),
                    p(&ws),
                    U(op),
                    p(&t.mods),
                    p(&dl),
                    U(nl),
                    U(log_n),
                    W(total),
                ],
            );
            same(&words(&c), &d, &format!("ew_scalar op {op} N=2^{log_n}"));
        }
    }
}

/// tensor_product and lincomb (more inputs than one Barrett period, more outputs than a tile).
#[test]
fn tensor_product_and_linear_combinations() {
    let cpu = CpuBackend::new();
    let mut rng = Rng(3);
    for log_n in LOG_NS {
        let n = 1usize << log_n;
        let r = ring(n);
        let t = ring_table_words(&r);
        let limbs = vec![2usize, 5, 7];
        let (dl, nl) = (idx(&limbs), limbs.len() as u32);
        let a = random_words(&mut rng, &r, &limbs, 2);
        let b = random_words(&mut rng, &r, &limbs, 2);
        let c = cpu
            .tensor_product(
                &r,
                &upload(&a, &limbs, 2, n, Repr::Ntt),
                &upload(&b, &limbs, 2, n, Repr::Ntt),
            )
            .unwrap();
        let w = (limbs.len() * n) as u64;
        let mut d = vec![0u32; 3 * w as usize];
        run_1d(
            "tensor_product",
            w,
            vec![
                pm(&mut d),
                p(&a),
                p(&b),
                p(&t.mods),
                p(&dl),
                U(nl),
                U(log_n),
                W(w),
            ],
        );
        same(&words(&c), &d, &format!("tensor_product N=2^{log_n}"));

        // Fewer terms at large N to bound the time.
        let (ni, outputs) = if log_n <= 12 { (17, 10) } else { (16, 9) };
        let count = 1;
        let xs: Vec<Vec<u32>> = (0..ni)
            .map(|_| random_words(&mut rng, &r, &limbs, count))
            .collect();
        let weights: Vec<u32> = (0..outputs * ni * limbs.len())
            .map(|i| {
                let q = r.modulus(limbs[i % limbs.len()]).value() as u64;
                (rng.next() % q) as u32
            })
            .collect();
        let cx: Vec<PolyBatch> = xs
            .iter()
            .map(|x| upload(x, &limbs, count, n, Repr::Ntt))
            .collect();
        let refs: Vec<&PolyBatch> = cx.iter().collect();
        let want = cpu
            .linear_combinations(&r, &refs, &weights, outputs)
            .unwrap();
        let total = (count * limbs.len() * n) as u64;
        let mut ys: Vec<Vec<u32>> = (0..outputs).map(|_| vec![0u32; total as usize]).collect();
        let yp: Vec<u64> = ys.iter_mut().map(|y| y.as_mut_ptr() as u64).collect();
        let xp: Vec<u64> = xs.iter().map(|x| x.as_ptr() as u64).collect();
        run_1d(
            "lincomb",
            total,
            vec![
                p(&yp),
                p(&xp),
                p(&weights),
                U(ni as u32),
                U(outputs as u32),
                p(&t.mods),
                p(&dl),
                U(nl),
                U(log_n),
                W(total),
            ],
        );
        for (k, (w, y)) in want.iter().zip(&ys).enumerate() {
            same(&words(w), y, &format!("lincomb output {k} N=2^{log_n}"));
        }
    }
}

/// base_convert (exact and approximate, every reduction branch) and scale_round.
#[test]
fn base_conversion_and_scale_and_round() {
    let cpu = CpuBackend::new();
    let mut rng = Rng(4);
    for log_n in LOG_NS {
        let n = 1usize << log_n;
        let r = ring(n);
        let ms = |ls: &[usize]| ls.iter().map(|&l| *r.modulus(l)).collect::<Vec<Modulus>>();
        for (from, to, count) in [
            (vec![0usize, 1, 2], vec![3usize, 5, 7], 2usize),
            (vec![5, 6, 7], vec![0, 1], 1),
            (vec![0, 1, 3, 4, 8], vec![5, 6], 1),
        ] {
            let conv = BaseConverter::new(&ms(&from), &ms(&to));
            let tw = conv_table_words(&conv);
            let x = random_words(&mut rng, &r, &from, count);
            let c = upload(&x, &from, count, n, Repr::Coeff);
            let (k, kt) = (from.len() as u32, to.len() as u32);
            let total = (count * to.len() * n) as u64;
            for exact in [false, true] {
                let want = cpu
                    .base_convert(&r, &c, to.as_slice().into(), &conv, exact)
                    .unwrap();
                let mut d = vec![0u32; total as usize];
                run_1d(
                    "base_convert",
                    total,
                    vec![
                        pm(&mut d),
                        p(&x),
                        p(&tw.from),
                        p(&tw.to),
                        p(&tw.bhi),
                        p(&tw.bhc),
                        p(&tw.bmc),
                        p(&tw.frac),
                        U(k),
                        U(kt),
                        U(log_n),
                        U(exact as u32),
                        W(total),
                    ],
                );
                same(
                    &words(&want),
                    &d,
                    &format!("base_convert {from:?}->{to:?} exact={exact} N=2^{log_n}"),
                );
            }
        }
        for (q, c, t) in [
            (vec![0usize, 1, 2], vec![3usize, 4, 5], 65537u64),
            (vec![5, 7, 8], vec![0, 1, 6], (1 << 40) + 15),
        ] {
            let rounder = ScaleRounder::new(&ms(&q), &ms(&c), t);
            let tw = round_table_words(&rounder);
            let all: Vec<usize> = q.iter().chain(&c).copied().collect();
            let count = 2;
            let x = random_words(&mut rng, &r, &all, count);
            let want = cpu
                .scale_and_round(
                    &r,
                    &upload(&x, &all, count, n, Repr::Coeff),
                    c.as_slice().into(),
                    &rounder,
                )
                .unwrap();
            let total = (count * n) as u64;
            let mut d = vec![0u32; count * c.len() * n];
            run_1d(
                "scale_round",
                total,
                vec![
                    pm(&mut d),
                    p(&x),
                    p(&tw.q),
                    p(&tw.c),
                    p(&tw.fint),
                    p(&tw.theta),
                    p(&tw.lam),
                    U(q.len() as u32),
                    U(c.len() as u32),
                    U(log_n),
                    W(total),
                ],
            );
            same(
                &words(&want),
                &d,
                &format!("scale_round {q:?}/{c:?} N=2^{log_n}"),
            );
        }
    }
}

/// automorphism (coefficient domain), permute_limbs (NTT domain), gather_limbs
/// (non-contiguous select_limbs) and concat_limbs.
#[test]
fn automorphisms_and_limb_copies() {
    let cpu = CpuBackend::new();
    let mut rng = Rng(5);
    for log_n in LOG_NS {
        let n = 1usize << log_n;
        let r = ring(n);
        let t = ring_table_words(&r);
        let (limbs, count) = (vec![1usize, 6, 8], 2usize);
        let (dl, nl) = (idx(&limbs), limbs.len() as u32);
        let total = (count * limbs.len() * n) as u64;
        let x = random_words(&mut rng, &r, &limbs, count);
        for g in [5usize, 2 * n - 1, 3usize.pow(7) % (2 * n)] {
            let want = cpu
                .automorphism(&r, &upload(&x, &limbs, count, n, Repr::Coeff), g)
                .unwrap();
            let mut d = vec![0u32; total as usize];
            run_1d(
                "automorphism",
                total,
                vec![
                    pm(&mut d),
                    p(&x),
                    p(&t.mods),
                    p(&dl),
                    U(nl),
                    U(log_n),
                    U((g % (2 * n)) as u32),
                    W(total),
                ],
            );
            same(
                &words(&want),
                &d,
                &format!("automorphism g={g} N=2^{log_n}"),
            );

            let want = cpu
                .automorphism_ntt(&r, &upload(&x, &limbs, count, n, Repr::Ntt), g)
                .unwrap();
            let map = automorphism_ntt_map(n, g % (2 * n));
            let mut d = vec![0u32; total as usize];
            run_1d(
                "permute_limbs",
                total,
                vec![pm(&mut d), p(&x), p(&map), U(log_n), W(total)],
            );
            same(
                &words(&want),
                &d,
                &format!("permute_limbs g={g} N=2^{log_n}"),
            );
        }

        let px = upload(&x, &limbs, count, n, Repr::Ntt);
        let sel = vec![8usize, 1];
        let want = cpu.select_limbs(&px, sel.as_slice().into()).unwrap();
        let pos: Vec<u32> = sel
            .iter()
            .map(|s| limbs.iter().position(|l| l == s).unwrap() as u32)
            .collect();
        let tot = (count * sel.len() * n) as u64;
        let mut d = vec![0u32; tot as usize];
        run_1d(
            "gather_limbs",
            tot,
            vec![
                pm(&mut d),
                p(&x),
                p(&pos),
                U(nl),
                U(sel.len() as u32),
                U(log_n),
                W(tot),
            ],
        );
        same(&words(&want), &d, &format!("gather_limbs N=2^{log_n}"));

        let blimbs = vec![0usize, 3];
        let y = random_words(&mut rng, &r, &blimbs, count);
        let want = cpu
            .concat_limbs(&px, &upload(&y, &blimbs, count, n, Repr::Ntt))
            .unwrap();
        let tot = (count * (limbs.len() + blimbs.len()) * n) as u64;
        let mut d = vec![0u32; tot as usize];
        run_1d(
            "concat_limbs",
            tot,
            vec![
                pm(&mut d),
                p(&x),
                p(&y),
                U(nl),
                U(blimbs.len() as u32),
                U(log_n),
                W(tot),
            ],
        );
        same(&words(&want), &d, &format!("concat_limbs N=2^{log_n}"));
    }
}

/// The tables the tests pass are the backend's: `mods` has the kernels' `struct Mod` layout.
#[test]
fn ring_tables_hold_one_struct_mod_per_prime() {
    let r = ring(1 << 10);
    let t = ring_table_words(&r);
    assert_eq!(t.mods, mod_words(r.moduli()));
    assert_eq!(t.psi.len(), r.len() << 10);
    assert_eq!(t.ninv.len(), 2 * r.len());
}
