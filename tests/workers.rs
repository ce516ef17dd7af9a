//! Multi-worker encrypted work: K `hetensor worker` processes holding only the public context
//! return exactly the ciphertexts the in-process (rayon) run computes, and the decrypted
//! aggregate matches the plaintext column sums and logistic-regression gradient.

use std::path::Path;

use hetensor::backend::default_backend;
use hetensor::ckks::{CkksContext, CkksParams, KeySet, SinglePrimeChain};
use hetensor::rlwe::{Ciphertext, Security};
use hetensor::serialize::{DecodeOptions, PublicContext, WriteOptions};
use hetensor::workers::{self, RowLayout, Task, WorkerLimits, WorkerPool};

/// The default limits, accepting the insecure test parameters these tests use.
fn test_limits() -> WorkerLimits {
    WorkerLimits {
        decode: DecodeOptions::allow_insecure(),
        ..WorkerLimits::default()
    }
}

/// A context with insecure test parameters (N = 2^`log_n`), its keys, and its public context
/// (public and relinearization keys, no Galois keys) as bytes.
fn small_context(log_n: u32, seed: u8) -> (CkksContext, KeySet, Vec<u8>) {
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n,
        levels: 2,
        scale_bits: 25,
        dnum: 1,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .unwrap();
    let ctx = CkksContext::with_seed(params, [seed; 32]).unwrap();
    let keys = ctx.keygen().unwrap();
    let mut public = Vec::new();
    PublicContext::write_parts(
        &mut public,
        &ctx,
        &keys.public,
        Some(&keys.relin),
        None,
        WriteOptions::default(),
    )
    .unwrap();
    (ctx, keys, public)
}

fn words(c: &Ciphertext) -> Vec<u32> {
    default_backend().download(c.polys()).unwrap()
}

#[test]
fn worker_processes_match_in_process_and_plaintext() {
    // 40 rows of 5 features + bias, cut into 2 shards; N = 2^12 (insecure on purpose: small).
    let n_rows = 40;
    let rows: Vec<Vec<f64>> = (0..n_rows)
        .map(|i| {
            (0..5)
                .map(|j| (((i * 7 + j * 13) % 17) as f64 - 8.0) / 6.0)
                .chain([1.0])
                .collect()
        })
        .collect();
    let labels: Vec<f64> = (0..n_rows)
        .map(|i| ((i * 5 + 1) % 3 == 0) as u8 as f64)
        .collect();
    let sigmoid = vec![0.5, 0.197, 0.0, -0.004]; // ~ degree-3 sigmoid fit on [-8, 8]
    let weights = vec![0.3, -0.2, 0.1, 0.05, -0.4, 0.1];
    let probe = Task::LogisticGradient {
        layout: RowLayout::new(6, 2048).unwrap(),
        weights: weights.clone(),
        sigmoid: sigmoid.clone(),
    };
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n: 12,
        levels: probe.depth() + 1,
        scale_bits: 25,
        dnum: 2,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .unwrap();
    let ctx = CkksContext::with_seed(params, [4; 32]).unwrap();
    let layout = RowLayout::new(6, ctx.slots()).unwrap();
    let grad = Task::LogisticGradient {
        layout,
        weights,
        sigmoid,
    };
    let sums = Task::ColumnSums { layout };
    let keys = ctx.keygen().unwrap();
    let mut steps = grad.rotation_steps();
    steps.extend(sums.rotation_steps());
    steps.extend(grad.finish_steps());
    let gk = ctx.gen_galois_keys(&keys.secret, &steps, false).unwrap();
    let mut public = Vec::new();
    PublicContext::write_parts(
        &mut public,
        &ctx,
        &keys.public,
        Some(&keys.relin),
        Some(&gk),
        WriteOptions::default(),
    )
    .unwrap();

    let enc = |v: &Vec<f64>| {
        ctx.encrypt_symmetric(
            &ctx.encode(v, ctx.default_scale(), ctx.max_level()).unwrap(),
            &keys.secret,
        )
        .unwrap()
    };
    let shards: Vec<Vec<Ciphertext>> = [&rows[..25], &rows[25..]]
        .iter()
        .zip([&labels[..25], &labels[25..]])
        .map(|(r, y)| {
            layout
                .pack(r)
                .iter()
                .zip(layout.pack_replicated(y).iter())
                .flat_map(|(a, b)| [enc(a), enc(b)])
                .collect()
        })
        .collect();

    let exe = Path::new(env!("CARGO_BIN_EXE_hetensor"));
    let mut pool = WorkerPool::spawn_with(exe, 2, 1, &test_limits()).unwrap();
    pool.send_context(&public).unwrap();
    let by_process = pool.run(ctx.rlwe(), &grad, &shards).unwrap();
    let pc = PublicContext::<CkksContext>::from_bytes_with(
        &public,
        default_backend(),
        DecodeOptions::allow_insecure(),
    )
    .unwrap();
    let in_process = workers::run_in_process(&pc, &grad, &shards).unwrap();
    for (a, b) in by_process.iter().zip(&in_process) {
        assert_eq!(words(&a.outputs[0]), words(&b.outputs[0]));
    }
    // The same job on shards the workers keep: the step sends only the task.
    pool.store(ctx.rlwe(), 7, &shards).unwrap();
    let from_store = pool.run_stored(ctx.rlwe(), &grad, &[], 7, 2).unwrap();
    for (a, b) in from_store.iter().zip(&in_process) {
        assert_eq!(words(&a.outputs[0]), words(&b.outputs[0]));
    }
    let total = workers::reduce(&ctx, &grad, &gk, &by_process).unwrap();
    let got = ctx.decrypt_decode(&total[0], &keys.secret).unwrap();
    let want = workers::compute_plain(&grad, &rows, &labels);
    for j in 0..6 {
        assert!(
            (got[j] - want[j]).abs() < 0.05,
            "gradient {j}: {} vs {}",
            got[j],
            want[j]
        );
    }

    // Column sums over the feature ciphertexts only.
    let features: Vec<Vec<Ciphertext>> = shards
        .iter()
        .map(|s| s.iter().step_by(2).cloned().collect())
        .collect();
    let parts = pool.run(ctx.rlwe(), &sums, &features).unwrap();
    let total = workers::reduce(&ctx, &sums, &gk, &parts).unwrap();
    let got = ctx.decrypt_decode(&total[0], &keys.secret).unwrap();
    let want = workers::compute_plain(&sums, &rows, &labels);
    for j in 0..6 {
        assert!(
            (got[j] - want[j]).abs() < 1e-2,
            "sum {j}: {} vs {}",
            got[j],
            want[j]
        );
    }
}

#[test]
fn worker_errors_come_back_as_errors() {
    // No Galois keys: the task cannot run, and the worker says why.
    let (ctx, keys, public) = small_context(12, 2);
    let exe = Path::new(env!("CARGO_BIN_EXE_hetensor"));
    let mut pool = WorkerPool::spawn_with(exe, 1, 1, &test_limits()).unwrap();
    pool.send_context(&public).unwrap();
    let ct = ctx
        .encrypt_symmetric(
            &ctx.encode(&[1.0], ctx.default_scale(), 1).unwrap(),
            &keys.secret,
        )
        .unwrap();
    let layout = RowLayout::new(1, ctx.slots()).unwrap();
    let gradient = Task::LogisticGradient {
        layout,
        weights: vec![1.0],
        sigmoid: vec![0.5, 0.25],
    };
    let err = pool
        .run(ctx.rlwe(), &gradient, &[vec![ct.clone(), ct.clone()]])
        .unwrap_err();
    assert!(err.to_string().contains("Galois"), "{err}");
    // The worker is still alive after a failed job.
    assert!(pool
        .run(ctx.rlwe(), &Task::ColumnSums { layout }, &[vec![]])
        .is_err());
    // A slot nothing was stored under is an error, not an empty shard.
    let sums = Task::ColumnSums { layout };
    let err = pool.run_stored(ctx.rlwe(), &sums, &[], 3, 1).unwrap_err();
    assert!(err.to_string().contains("slot 3"), "{err}");
    pool.store(ctx.rlwe(), 3, &[vec![ct.clone()]]).unwrap();
    let out = pool.run_stored(ctx.rlwe(), &sums, &[], 3, 1).unwrap();
    assert_eq!(words(&out[0].outputs[0]), words(&ct));
    // More shards than workers.
    assert!(pool.run_stored(ctx.rlwe(), &sums, &[], 3, 2).is_err());
}

/// `hetensor worker` processes keep to the limits given as flags (`WorkerPool::spawn_with`), and
/// `WorkerPool::drop_slot` frees a slot for the next STORE.
#[test]
fn worker_processes_keep_to_their_limits_and_drop_slots() {
    let (ctx, keys, public) = small_context(12, 5);
    let ct = ctx
        .encrypt_symmetric(
            &ctx.encode(&[3.0], ctx.default_scale(), 1).unwrap(),
            &keys.secret,
        )
        .unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_hetensor"));
    let limits = WorkerLimits {
        max_slots: 1,
        ..test_limits()
    };
    let mut pool = WorkerPool::spawn_with(exe, 1, 1, &limits).unwrap();
    pool.send_context(&public).unwrap();
    let shard = [vec![ct.clone()]];
    pool.store(ctx.rlwe(), 1, &shard).unwrap();
    let err = pool.store(ctx.rlwe(), 2, &shard).unwrap_err();
    assert!(err.to_string().contains("--max-slots"), "{err}");
    pool.drop_slot(1, 1).unwrap();
    assert!(pool.drop_slot(1, 1).is_err(), "slot 1 is empty now");
    pool.store(ctx.rlwe(), 2, &shard).unwrap();
    let sums = Task::ColumnSums {
        layout: RowLayout::new(1, ctx.slots()).unwrap(),
    };
    let out = pool.run_stored(ctx.rlwe(), &sums, &[], 2, 1).unwrap();
    assert_eq!(words(&out[0].outputs[0]), words(&ct));
    let err = pool.run_stored(ctx.rlwe(), &sums, &[], 1, 1).unwrap_err();
    assert!(err.to_string().contains("slot 1"), "{err}");
}

/// A `hetensor worker` whose parent starts a frame and then sends nothing more (its pipe still
/// open) answers ERROR after `--frame-timeout-secs` and exits with a failure.
#[test]
fn worker_process_answers_a_stalled_frame_with_an_error_and_exits() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_hetensor"))
        .args(["worker", "--frame-timeout-secs", "0.2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A STORE frame's tag and half of its length.
    stdin.write_all(&[6, 100, 0, 0, 0]).unwrap();
    stdin.flush().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    // Only turns a worker that would wait forever into a failure.
    let out = match rx.recv_timeout(std::time::Duration::from_secs(300)) {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill();
            panic!("the worker is still waiting for the rest of the frame");
        }
    };
    assert!(!child.wait().unwrap().success());
    assert_eq!(out[0], 4, "an ERROR frame");
    let len = u64::from_le_bytes(out[1..9].try_into().unwrap()) as usize;
    assert_eq!(out.len(), 9 + len);
    let msg = String::from_utf8_lossy(&out[9..]);
    assert!(
        msg.contains("protocol error") && msg.contains("did not arrive"),
        "{msg}"
    );
    drop(stdin);
}

/// One encrypted training step (encrypted weights, block layout) with its two shards on
/// `hetensor worker` processes gives word-identical weights and velocity to the same step with
/// the shards on rayon threads, and both match the plaintext step with the same polynomial.
#[test]
fn training_step_on_worker_processes_is_word_identical() {
    use hetensor::nn::PolyActivation;
    use hetensor::train::logistic::{self, BatchCt, InProcess, ShardRunner};
    use hetensor::train::{encrypt_public, BlockLayout, KeyHolder};
    use std::sync::Arc;

    // N = 2^12 (insecure on purpose: small); 5 features + bias, 2 shards of 20 samples.
    let params = CkksParams::single_prime(SinglePrimeChain {
        log_n: 12,
        levels: 6,
        scale_bits: 26,
        dnum: 2,
        security: Security::InsecureForTestingOnly,
        ..Default::default()
    })
    .unwrap();
    let holder =
        KeyHolder::new(Arc::new(CkksContext::with_seed(params, [9; 32]).unwrap())).unwrap();
    let ctx = holder.ctx().clone();
    let (d, n, a) = (5usize, 40usize, 8.0);
    let layout = BlockLayout::new(ctx.slots(), d + 1, 1).unwrap();
    let ev = holder.public_eval(&layout).unwrap();
    let sig = PolyActivation::sigmoid(3, (-a, a)).unwrap();
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..d)
                .map(|j| (((i * 7 + j * 13) % 17) as f64 - 8.0) / 6.0)
                .collect()
        })
        .collect();
    let ys: Vec<f64> = (0..n)
        .map(|i| ((i * 5 + 1) % 3 == 0) as u8 as f64)
        .collect();
    let w0: Vec<f64> = vec![0.3, -0.2, 0.1, 0.05, -0.4, 0.1];
    let shards: Vec<Vec<BatchCt>> = [0..20, 20..40]
        .into_iter()
        .map(|r| {
            let packed: Vec<Vec<f64>> = rows[r.clone()]
                .iter()
                .map(|x| x.iter().map(|v| v / a).chain([1.0 / a]).collect())
                .collect();
            let x = encrypt_public(&ev, &layout.pack_rows(&packed).unwrap()).unwrap();
            let y = encrypt_public(
                &ev,
                &layout.replicate_samples(&ys[r], sig.coeffs[0]).unwrap(),
            )
            .unwrap();
            vec![BatchCt { x, y, count: 20 }]
        })
        .collect();
    let w = holder
        .encrypt(&layout.replicate_blocks(&w0).unwrap())
        .unwrap();
    let (lr, step_size) = (0.5, 0.5 / n as f64 * a);

    let step = |runner: &mut dyn ShardRunner, setup: bool| {
        if setup {
            runner.setup(&ev).unwrap();
        }
        let outs = runner
            .run_step(ev.eval(), &layout, &sig.coeffs, a, &w, 0, &shards)
            .unwrap();
        let partials: Vec<Ciphertext> = outs.iter().map(|o| o.partial.clone()).collect();
        logistic::apply_update(ev.eval(), &layout, &partials, &w, None, 0.9, step_size).unwrap()
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_hetensor"));
    let mut pool = WorkerPool::spawn_with(exe, 2, 1, &test_limits()).unwrap();
    let (w_proc, v_proc) = step(&mut pool, true);
    let (w_in, v_in) = step(&mut InProcess, true);
    assert_eq!(words(&w_proc), words(&w_in));
    assert_eq!(words(&v_proc), words(&v_in));
    // The same batch again: the workers compute on the shards they kept from the first step.
    let (w_kept, _) = step(&mut pool, false);
    assert_eq!(words(&w_kept), words(&w_in));

    // Against the plaintext step: w − η/n · Σ (p(z) − y)·x.
    let (wd, bd) = logistic::decrypt_weights(&holder, &layout, &w_proc, d).unwrap();
    let mut want = w0.clone();
    for (x, y) in rows.iter().zip(&ys) {
        let z: f64 = x.iter().zip(&w0).map(|(a, b)| a * b).sum::<f64>() + w0[d];
        let e = sig.eval(z) - y;
        for (j, wj) in want.iter_mut().enumerate() {
            *wj -= lr / n as f64 * e * x.get(j).copied().unwrap_or(1.0);
        }
    }
    for (j, got) in wd.iter().chain([&bd]).enumerate() {
        assert!((got - want[j]).abs() < 1e-3, "w{j}: {got} vs {}", want[j]);
    }
}

/// `hetensor titanic-workers` end to end (128-bit parameters, the real Titanic rows): every mode
/// runs, the decrypted means and gradient match the plaintext computation, and the JSON report
/// carries the per-rep timings the speed-ups are computed from.
#[test]
fn titanic_workers_command_matches_plaintext() {
    let exe = env!("CARGO_BIN_EXE_hetensor");
    let out = std::process::Command::new(exe)
        .args(["titanic-workers", "--workers", "2", "--reps", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rows"], 891);
    assert!(r["max_abs_error_means"].as_f64().unwrap() < 1e-3, "{r}");
    // Gradient entries are sums over 891 rows (up to ~60).
    assert!(r["max_abs_error_gradient"].as_f64().unwrap() < 0.1, "{r}");
    let modes = r["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 4);
    for m in modes {
        assert_eq!(m["gradient_seconds_per_rep"].as_array().unwrap().len(), 2);
    }
    for k in [
        "speedup_processes",
        "speedup_processes_paired",
        "speedup_vs_one_worker",
    ] {
        assert!(r[k].as_f64().unwrap().is_finite(), "{k}");
    }
}

mod frames {
    //! The worker's side of the pipe parses bytes it did not produce: whatever arrives, it
    //! answers every JOB and STORE frame (an ERROR for bad ones) or stops with an error, and
    //! never panics.

    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const CONTEXT: u8 = 1;
    const JOB: u8 = 2;
    const RESULT: u8 = 3;
    const ERROR: u8 = 4;
    const QUIT: u8 = 5;
    const STORE: u8 = 6;
    const STORED: u8 = 7;
    const DROP: u8 = 8;
    const DROPPED: u8 = 9;

    fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A small public context, its parameters, and a valid STORE payload (one ciphertext).
    /// Also the bytes the ciphertext takes in a worker's memory.
    fn fixture() -> &'static (Vec<u8>, Vec<u8>, u64) {
        static F: OnceLock<(Vec<u8>, Vec<u8>, u64)> = OnceLock::new();
        F.get_or_init(|| {
            let (ctx, keys, public) = small_context(10, 3);
            let ct = ctx
                .encrypt_symmetric(
                    &ctx.encode(&[1.0, 2.0], ctx.default_scale(), 1).unwrap(),
                    &keys.secret,
                )
                .unwrap();
            let mut store = 5u32.to_le_bytes().to_vec();
            store.extend_from_slice(&1u32.to_le_bytes());
            hetensor::serialize::write(ctx.rlwe(), &ct, &mut store, WriteOptions::default())
                .unwrap();
            let p = ct.polys();
            let bytes = (p.count() * p.limbs().len() * p.n() * 4) as u64;
            (public, store, bytes)
        })
    }

    /// A valid JOB payload: column sums over what slot 5 holds.
    fn job() -> Vec<u8> {
        let task = serde_json::to_vec(&Task::ColumnSums {
            layout: RowLayout::new(2, 512).unwrap(),
        })
        .unwrap();
        let mut j = (task.len() as u32).to_le_bytes().to_vec();
        j.extend_from_slice(&task);
        j.extend_from_slice(&0u32.to_le_bytes());
        j.extend_from_slice(&1u32.to_le_bytes());
        j.extend_from_slice(&5u32.to_le_bytes());
        j
    }

    /// Runs a worker on `input` within `limits`; returns its result and the frames it wrote.
    fn serve_frames(
        input: &[u8],
        limits: WorkerLimits,
    ) -> (hetensor::Result<()>, Vec<(u8, Vec<u8>)>) {
        let mut out = Vec::new();
        let r = workers::serve_with(
            std::io::Cursor::new(input.to_vec()),
            &mut out,
            default_backend(),
            limits,
        );
        (r, split_frames(&out))
    }

    fn split_frames(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut o = out;
        while o.len() >= 9 {
            let len = u64::from_le_bytes(o[1..9].try_into().unwrap()) as usize;
            frames.push((o[0], o[9..9 + len].to_vec()));
            o = &o[9 + len..];
        }
        assert!(o.is_empty(), "a partial frame in the output");
        frames
    }

    /// Runs a worker on `input` with the default limits; returns its result and the tags of
    /// the frames it wrote. A worker that stops with an error has said why in an ERROR frame.
    fn serve(input: &[u8]) -> (hetensor::Result<()>, Vec<u8>) {
        let (r, frames) = serve_frames(input, test_limits());
        if let Err(e) = &r {
            let (tag, msg) = frames
                .last()
                .expect("an ERROR frame before the worker stops");
            assert_eq!(*tag, ERROR, "last frame before {e}");
            assert_eq!(String::from_utf8_lossy(msg), e.to_string());
        }
        (r, frames.into_iter().map(|(t, _)| t).collect())
    }

    /// The message of the last frame, which must be an ERROR.
    fn last_error(frames: &[(u8, Vec<u8>)]) -> String {
        let (tag, msg) = frames.last().expect("a frame");
        assert_eq!(*tag, ERROR);
        String::from_utf8(msg.clone()).unwrap()
    }

    fn drop_frame(slot: u32) -> Vec<u8> {
        frame(DROP, &slot.to_le_bytes())
    }

    /// `store` (one ciphertext under slot 5) re-addressed to `slot`.
    fn store_under(slot: u32) -> Vec<u8> {
        let mut p = fixture().1.clone();
        p[..4].copy_from_slice(&slot.to_le_bytes());
        frame(STORE, &p)
    }

    /// Slots and stored bytes are limited, a STORE beyond a limit is an ERROR that changes
    /// nothing, and DROP frees a slot (its bytes too).
    #[test]
    fn store_limits_and_drop() {
        let (public, _, ct_bytes) = fixture();
        let by_slots = WorkerLimits {
            max_slots: 2,
            ..test_limits()
        };
        let input = [
            frame(CONTEXT, public),
            store_under(1),
            store_under(2),
            store_under(3), // a third slot: refused
            store_under(2), // replacing a slot takes no new one
            drop_frame(1),
            store_under(3), // room again
            drop_frame(1),  // nothing there any more
            frame(JOB, &job()),
            frame(QUIT, &[]),
        ]
        .concat();
        let (r, frames) = serve_frames(&input, by_slots);
        r.unwrap();
        let tags: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(
            tags,
            [STORED, STORED, ERROR, STORED, DROPPED, STORED, ERROR, ERROR]
        );
        let msg = String::from_utf8_lossy(&frames[2].1);
        assert!(
            msg.contains("limit exceeded") && msg.contains("--max-slots"),
            "{msg}"
        );
        assert!(String::from_utf8_lossy(&frames[6].1).contains("slot 1"));
        // The job reads slot 5, which was never stored.
        assert!(String::from_utf8_lossy(&frames[7].1).contains("slot 5"));

        // A job that lists a slot twice (which would copy its ciphertexts twice: a 4 MB JOB
        // could list one slot a million times) is refused.
        let mut twice = job();
        let n = twice.len();
        twice[n - 8..n - 4].copy_from_slice(&2u32.to_le_bytes());
        twice.extend_from_slice(&5u32.to_le_bytes());
        let input = [
            frame(CONTEXT, public),
            store_under(5),
            frame(JOB, &twice),
            frame(JOB, &job()),
            frame(QUIT, &[]),
        ]
        .concat();
        let (r, frames) = serve_frames(&input, test_limits());
        r.unwrap();
        let tags: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(tags, [STORED, ERROR, RESULT]);
        let msg = String::from_utf8_lossy(&frames[1].1);
        assert!(msg.contains("slot 5 is listed twice"), "{msg}");

        // Bytes: room for between one and two ciphertexts.
        let by_bytes = WorkerLimits {
            max_stored_bytes: ct_bytes * 3 / 2,
            ..test_limits()
        };
        let input = [
            frame(CONTEXT, public),
            store_under(1),
            store_under(2), // over the byte limit: refused
            store_under(1), // replacing: still one ciphertext
            drop_frame(1),
            store_under(2),
            frame(QUIT, &[]),
        ]
        .concat();
        let (r, frames) = serve_frames(&input, by_bytes);
        r.unwrap();
        let tags: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(tags, [STORED, ERROR, STORED, DROPPED, STORED]);
        let msg = String::from_utf8_lossy(&frames[1].1);
        assert!(msg.contains("--max-stored-mb"), "{msg}");
    }

    /// Every way the protocol can break ends the worker with an ERROR frame that says what
    /// happened, and a declared length above its tag's bound is refused before it is read.
    #[test]
    fn protocol_errors_are_answered_before_the_worker_stops() {
        let (public, store, _) = fixture();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                [frame(CONTEXT, public), vec![42, 0, 0]].concat(),
                "unknown frame tag 42",
            ),
            // A STORE frame that says it has 2^60 bytes: refused from its length alone.
            (
                [
                    frame(CONTEXT, public),
                    vec![STORE],
                    (1u64 << 60).to_le_bytes().to_vec(),
                ]
                .concat(),
                "at most",
            ),
            // QUIT carries nothing; a DROP carries a slot.
            (
                [vec![QUIT], 1u64.to_le_bytes().to_vec(), vec![0]].concat(),
                "QUIT frame of 1 bytes",
            ),
            (
                [vec![DROP], 5u64.to_le_bytes().to_vec(), vec![0; 5]].concat(),
                "DROP frame of 5 bytes",
            ),
            // The stream ends inside a frame.
            (
                [frame(CONTEXT, public), frame(STORE, store)[..40].to_vec()].concat(),
                "truncated STORE frame",
            ),
            (
                [frame(CONTEXT, public), vec![JOB, 3]].concat(),
                "inside the length",
            ),
            (
                frame(CONTEXT, &public[..public.len() / 2]),
                "CONTEXT frame does not decode",
            ),
        ];
        for (input, want) in cases {
            let (r, frames) = serve_frames(&input, test_limits());
            let e = r.expect_err(want);
            assert!(matches!(e, hetensor::Error::Protocol(_)), "{e}");
            let msg = last_error(&frames);
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            assert_eq!(msg, e.to_string());
        }
    }

    /// A frame that starts and then stops arriving on an open pipe is answered with an ERROR
    /// once the configured timeout has passed, instead of blocking the worker forever.
    #[test]
    fn partial_frame_on_an_open_pipe_times_out_with_an_error() {
        use std::io::Write;
        let (public, store, _) = fixture();
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(&frame(CONTEXT, public)).unwrap();
        writer.write_all(&frame(STORE, store)[..20]).unwrap();
        let limits = WorkerLimits {
            frame_timeout: Some(std::time::Duration::from_millis(300)),
            ..test_limits()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let r = workers::serve_with(reader, &mut out, default_backend(), limits);
            let _ = tx.send((r, out));
        });
        // The writer stays open: without a timeout the worker would wait forever (the bound
        // here only turns such a hang into a failure).
        let (r, out) = rx
            .recv_timeout(std::time::Duration::from_secs(300))
            .expect("the worker answered");
        let e = r.unwrap_err();
        assert!(matches!(e, hetensor::Error::Protocol(_)), "{e}");
        let msg = last_error(&split_frames(&out));
        assert!(msg.contains("did not arrive within 0.3 s"), "{msg}");
        drop(writer);
    }
    #[test]
    fn valid_store_then_job_answers_both() {
        let (public, store, _) = fixture();
        let mut input = frame(CONTEXT, public);
        input.extend(frame(STORE, store));
        input.extend(frame(JOB, &job()));
        input.extend(frame(QUIT, &[]));
        let (r, tags) = serve(&input);
        r.unwrap();
        assert_eq!(tags, vec![7, 3], "STORED then RESULT");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = serve(&bytes);
        }

        /// After a valid context, a mutated STORE or JOB (bytes flipped, cut short or
        /// extended) gets exactly one answer, and the worker goes on to answer the next one.
        #[test]
        fn mutated_frames_get_one_answer_each(
            store_job in any::<bool>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            extra in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let (public, store, _) = fixture();
            let mut payload = if store_job { store.clone() } else { job() };
            for (i, b) in flips {
                let n = payload.len();
                payload[i % n] ^= b;
            }
            payload.truncate(cut % (payload.len() + 1));
            payload.extend(extra);
            let mut input = frame(CONTEXT, public);
            input.extend(frame(if store_job { STORE } else { JOB }, &payload));
            input.extend(frame(STORE, store));
            input.extend(frame(QUIT, &[]));
            let (r, tags) = serve(&input);
            prop_assert!(r.is_ok(), "{:?}", r);
            prop_assert_eq!(tags.len(), 2);
            prop_assert!([3u8, 4, 7].contains(&tags[0]));
            prop_assert_eq!(tags[1], 7);
        }
    }
}
