//! Encrypted work across worker processes, or across rayon threads in one process.
//!
//! The key owner serializes a [`PublicContext`] (never the secret key) once per worker, then
//! sends each worker a [`Task`] and its shard of ciphertexts; the worker computes
//! ([`compute`]) and sends encrypted partial results back, which the parent adds up and
//! completes ([`reduce`]: [`aggregate`], then [`Task::finish`]). Only the key owner can decrypt
//! the total.
//!
//! Workers are `hetensor worker` processes talking over their stdin/stdout pipes with
//! length-prefixed frames (`tag: u8, len: u64, payload`):
//!
//! | tag | direction | payload |
//! |---|---|---|
//! | 1 `CONTEXT` | parent → worker | a serialized public context |
//! | 2 `JOB` | parent → worker | `u32` JSON length, the [`Task`] as JSON, `u32` count, ciphertexts, `u32` count, slots |
//! | 3 `RESULT` | worker → parent | `f64` compute seconds, `u32` count, ciphertexts |
//! | 4 `ERROR` | worker → parent | UTF-8 message |
//! | 5 `QUIT` | parent → worker | empty |
//! | 6 `STORE` | parent → worker | `u32` slot, `u32` count, ciphertexts |
//! | 7 `STORED` | worker → parent | empty |
//!
//! A job's inputs are its own ciphertexts followed by those stored under each of its slots:
//! data that every step of a job reuses (a training set's shard) crosses the pipe once
//! ([`WorkerPool::store`]), and a step sends only what changes (the weights, or nothing).
//! Every `JOB` and `STORE` gets exactly one answer; `CONTEXT` and `QUIT` get none.

mod tasks;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

pub use tasks::{compute, compute_plain, RowLayout, Task};

use crate::backend::Backend;
use crate::ckks::CkksContext;
use crate::error::{Error, Result};
use crate::rlwe::{Ciphertext, GaloisKeys, RlweContext};
use crate::serialize::{self, DecodeOptions, PublicContext, WriteOptions};
use crate::train::logistic::{BatchCt, ShardOutput, ShardRunner};
use crate::train::{BlockLayout, Eval, PublicEval};

const CONTEXT: u8 = 1;
const JOB: u8 = 2;
const RESULT: u8 = 3;
const ERROR: u8 = 4;
const QUIT: u8 = 5;
const STORE: u8 = 6;
const STORED: u8 = 7;

/// Largest frame either side accepts (a bound on what a corrupt length can make it read).
const MAX_FRAME: u64 = 8 << 30;

fn write_frame(w: &mut dyn Write, tag: u8, payload: &[u8]) -> Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(payload.len() as u64).to_le_bytes())?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `None` at a clean end of stream. The payload grows with the bytes that
/// actually arrive, not with the length field.
fn read_frame(r: &mut dyn Read) -> Result<Option<(u8, Vec<u8>)>> {
    let mut tag = [0u8; 1];
    if r.read(&mut tag)? == 0 {
        return Ok(None);
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(Error::Decode(format!("frame of {len} bytes")));
    }
    // Room for the whole frame up front (no copies as it grows), up to 64 MiB: beyond that a
    // wrong length must not reserve memory the bytes never fill.
    let mut payload = Vec::with_capacity(len.min(64 << 20) as usize);
    r.take(len).read_to_end(&mut payload)?;
    if payload.len() as u64 != len {
        return Err(Error::Decode("truncated frame".into()));
    }
    Ok(Some((tag[0], payload)))
}

fn encode_cts(ctx: &RlweContext, cts: &[Ciphertext], out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(&(cts.len() as u32).to_le_bytes());
    for ct in cts {
        serialize::write(ctx, ct, &mut *out, WriteOptions::default())?;
    }
    Ok(())
}

fn decode_cts(ctx: &RlweContext, r: &mut &[u8]) -> Result<Vec<Ciphertext>> {
    let mut n = [0u8; 4];
    r.read_exact(&mut n)
        .map_err(|_| Error::Decode("truncated ciphertext count".into()))?;
    let n = u32::from_le_bytes(n) as usize;
    // Each ciphertext takes more than a header: the count cannot exceed the bytes left.
    if n > r.len() / serialize::HEADER_LEN {
        return Err(Error::Decode(format!(
            "{n} ciphertexts in {} bytes",
            r.len()
        )));
    }
    (0..n).map(|_| serialize::read(ctx, &mut *r)).collect()
}

/// The worker side: serves frames from `input` until `QUIT` or end of input. Computes on
/// `backend`. Errors in a job are reported to the parent, which decides what to do.
pub fn serve(input: impl Read, output: impl Write, backend: Arc<dyn Backend>) -> Result<()> {
    serve_with(input, output, backend, DecodeOptions::default())
}

/// [`serve`], decoding the public context with `opts` (`hetensor worker --allow-insecure`
/// accepts insecure test parameters; by default they are refused as the constructors refuse
/// them).
pub fn serve_with(
    input: impl Read,
    output: impl Write,
    backend: Arc<dyn Backend>,
    opts: DecodeOptions,
) -> Result<()> {
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    let mut pc: Option<PublicContext<CkksContext>> = None;
    let mut stored: HashMap<u32, Vec<Ciphertext>> = HashMap::new();
    while let Some((tag, payload)) = read_frame(&mut input)? {
        let reply = match tag {
            CONTEXT => {
                pc = Some(PublicContext::from_bytes_with(
                    &payload,
                    backend.clone(),
                    opts,
                )?);
                // Stored ciphertexts belong to the old context's parameters.
                stored.clear();
                continue;
            }
            JOB => on_pool(|| run_job(pc.as_ref(), &stored, &payload)).map(|b| (RESULT, b)),
            STORE => {
                on_pool(|| store(pc.as_ref(), &mut stored, &payload)).map(|_| (STORED, vec![]))
            }
            QUIT => break,
            other => return Err(Error::Decode(format!("unknown frame tag {other}"))),
        };
        match reply {
            Ok((tag, bytes)) => write_frame(&mut output, tag, &bytes)?,
            Err(e) => write_frame(&mut output, ERROR, e.to_string().as_bytes())?,
        }
    }
    Ok(())
}

fn context(pc: Option<&PublicContext<CkksContext>>) -> Result<&PublicContext<CkksContext>> {
    pc.ok_or_else(|| Error::InvalidInput("data before any context".into()))
}

fn read_u32(r: &mut &[u8], what: &str) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|_| Error::Decode(format!("truncated {what}")))?;
    Ok(u32::from_le_bytes(b))
}

fn store(
    pc: Option<&PublicContext<CkksContext>>,
    stored: &mut HashMap<u32, Vec<Ciphertext>>,
    payload: &[u8],
) -> Result<()> {
    let ctx = context(pc)?.context.rlwe();
    let mut r = payload;
    let slot = read_u32(&mut r, "slot")?;
    let cts = decode_cts(ctx, &mut r)?;
    stored.insert(slot, cts);
    Ok(())
}

fn run_job(
    pc: Option<&PublicContext<CkksContext>>,
    stored: &HashMap<u32, Vec<Ciphertext>>,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let pc = context(pc)?;
    let ctx = pc.context.rlwe();
    let mut r = payload;
    let len = read_u32(&mut r, "job")? as usize;
    if len > r.len() {
        return Err(Error::Decode("truncated task".into()));
    }
    let task: Task =
        serde_json::from_slice(&r[..len]).map_err(|e| Error::Decode(format!("task: {e}")))?;
    r = &r[len..];
    let mut inputs = decode_cts(ctx, &mut r)?;
    let slots = read_u32(&mut r, "slot count")?;
    for _ in 0..slots {
        let slot = read_u32(&mut r, "slot")?;
        let cts = stored.get(&slot).ok_or_else(|| {
            Error::InvalidInput(format!("no ciphertexts stored under slot {slot}"))
        })?;
        inputs.extend(cts.iter().cloned());
    }
    let t = Instant::now();
    let outputs = compute(pc, &task, &inputs)?;
    let seconds = t.elapsed().as_secs_f64();
    let mut out = seconds.to_le_bytes().to_vec();
    encode_cts(ctx, &outputs, &mut out)?;
    Ok(out)
}

/// Runs `f` on a thread of rayon's global pool. A shard of one ciphertext gives `compute`
/// nothing to split at the top, so it would run on the calling thread, and every parallel
/// loop inside it (hundreds per ciphertext) would hand its work to the pool and sleep until
/// it is done: two context switches each. On a one-thread worker that made a one-ciphertext
/// job ~25 % slower than its share of a two-ciphertext job.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// What one shard's job returned.
#[derive(Debug)]
pub struct ShardResult {
    /// The encrypted partial results.
    pub outputs: Vec<Ciphertext>,
    /// Seconds the worker spent computing (excluding transfer and (de)serialization).
    pub compute_seconds: f64,
}

struct Worker {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// K `hetensor worker` processes, each holding the public context.
pub struct WorkerPool {
    workers: Vec<Worker>,
    /// Training ([`ShardRunner`]): the slot each (batch, round of shards) is stored under.
    batch_slots: HashMap<(usize, usize), u32>,
}

impl WorkerPool {
    /// Starts `k` workers running `exe worker` (the `hetensor` binary), each limited to
    /// `threads_per_worker` rayon threads (0 = rayon's default).
    pub fn spawn(exe: &Path, k: usize, threads_per_worker: usize) -> Result<Self> {
        Self::spawn_with(exe, k, threads_per_worker, DecodeOptions::default())
    }

    /// [`Self::spawn`] with the workers decoding the public context with `opts` (for insecure
    /// test parameters: `DecodeOptions::allow_insecure()`).
    pub fn spawn_with(
        exe: &Path,
        k: usize,
        threads_per_worker: usize,
        opts: DecodeOptions,
    ) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidInput("need at least one worker".into()));
        }
        let mut workers = Vec::with_capacity(k);
        for _ in 0..k {
            let mut cmd = Command::new(exe);
            cmd.arg("worker");
            if opts.allow_insecure {
                cmd.arg("--allow-insecure");
            }
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if threads_per_worker > 0 {
                cmd.env("RAYON_NUM_THREADS", threads_per_worker.to_string());
            }
            let mut child = cmd.spawn().map_err(|e| {
                Error::InvalidInput(format!("cannot start worker `{}`: {e}", exe.display()))
            })?;
            let stdin = BufWriter::new(child.stdin.take().expect("piped"));
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            workers.push(Worker {
                child,
                stdin,
                stdout,
            });
        }
        Ok(Self {
            workers,
            batch_slots: HashMap::new(),
        })
    }

    /// The `hetensor` binary to use for workers: `$HETENSOR_BIN`, else the running executable
    /// when it is `hetensor` itself.
    pub fn default_exe() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("HETENSOR_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe()?;
        match exe.file_stem().and_then(|s| s.to_str()) {
            Some("hetensor") => Ok(exe),
            _ => Err(Error::InvalidInput(
                "set HETENSOR_BIN to the hetensor binary to run worker processes".into(),
            )),
        }
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false (a pool has at least one worker).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Sends the serialized public context to every worker.
    pub fn send_context(&mut self, public_context: &[u8]) -> Result<()> {
        for w in &mut self.workers {
            write_frame(&mut w.stdin, CONTEXT, public_context)?;
        }
        Ok(())
    }

    /// Runs `task` with shard `i` on worker `i` (at most one shard per worker), all workers
    /// at once, and returns their results in shard order.
    pub fn run(
        &mut self,
        ctx: &RlweContext,
        task: &Task,
        shards: &[Vec<Ciphertext>],
    ) -> Result<Vec<ShardResult>> {
        let task_json = task_json(task)?;
        let replies = self.exchange(JOB, RESULT, shards.len(), &|i| {
            job_bytes(ctx, &task_json, &shards[i], &[])
        })?;
        replies.iter().map(|b| shard_result(ctx, b)).collect()
    }

    /// Keeps shard `i` on worker `i` under `slot` (replacing what was there), for later
    /// [`Self::run_stored`] jobs: a step that reuses its data then sends none of it.
    pub fn store(
        &mut self,
        ctx: &RlweContext,
        slot: u32,
        shards: &[Vec<Ciphertext>],
    ) -> Result<()> {
        self.exchange(STORE, STORED, shards.len(), &|i| {
            let mut bytes = slot.to_le_bytes().to_vec();
            encode_cts(ctx, &shards[i], &mut bytes)?;
            Ok(bytes)
        })?;
        Ok(())
    }

    /// Runs `task` on the first `n` workers, each on `extra` followed by the ciphertexts it
    /// stored under `slot`, and returns their results in worker order.
    pub fn run_stored(
        &mut self,
        ctx: &RlweContext,
        task: &Task,
        extra: &[Ciphertext],
        slot: u32,
        n: usize,
    ) -> Result<Vec<ShardResult>> {
        let task_json = task_json(task)?;
        let replies = self.exchange(JOB, RESULT, n, &|_| {
            job_bytes(ctx, &task_json, extra, &[slot])
        })?;
        replies.iter().map(|b| shard_result(ctx, b)).collect()
    }

    /// Sends a `tag` frame with payload `payload(i)` to worker `i` for `i < n`, all at once
    /// (each built on its worker's own thread), and returns the payloads of their `expect`
    /// answers in worker order. An `ERROR` answer becomes an error.
    fn exchange(
        &mut self,
        tag: u8,
        expect: u8,
        n: usize,
        payload: &(dyn Fn(usize) -> Result<Vec<u8>> + Sync),
    ) -> Result<Vec<Vec<u8>>> {
        if n > self.workers.len() {
            return Err(Error::InvalidInput(format!(
                "{n} shards for {} workers",
                self.workers.len()
            )));
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = self.workers[..n]
                .iter_mut()
                .enumerate()
                .map(|(i, w)| {
                    s.spawn(move || -> Result<Vec<u8>> {
                        let bytes = payload(i)?;
                        write_frame(&mut w.stdin, tag, &bytes)?;
                        drop(bytes);
                        match read_frame(&mut w.stdout)? {
                            Some((t, bytes)) if t == expect => Ok(bytes),
                            Some((ERROR, msg)) => Err(Error::Backend(format!(
                                "worker failed: {}",
                                String::from_utf8_lossy(&msg)
                            ))),
                            Some((t, _)) => {
                                Err(Error::Decode(format!("unexpected frame {t} from worker")))
                            }
                            None => Err(Error::Backend(
                                "worker exited without an answer (see its stderr)".into(),
                            )),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Backend("worker thread panicked".into())))
                })
                .collect()
        })
    }
}

fn task_json(task: &Task) -> Result<Vec<u8>> {
    serde_json::to_vec(task).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// A `JOB` payload: the task, its own ciphertexts, and the slots of stored ones.
fn job_bytes(
    ctx: &RlweContext,
    task_json: &[u8],
    cts: &[Ciphertext],
    slots: &[u32],
) -> Result<Vec<u8>> {
    let mut job = (task_json.len() as u32).to_le_bytes().to_vec();
    job.extend_from_slice(task_json);
    encode_cts(ctx, cts, &mut job)?;
    job.extend_from_slice(&(slots.len() as u32).to_le_bytes());
    for s in slots {
        job.extend_from_slice(&s.to_le_bytes());
    }
    Ok(job)
}

/// Parses a `RESULT` payload.
fn shard_result(ctx: &RlweContext, bytes: &[u8]) -> Result<ShardResult> {
    let mut r = bytes;
    let mut secs = [0u8; 8];
    r.read_exact(&mut secs)
        .map_err(|_| Error::Decode("truncated result".into()))?;
    Ok(ShardResult {
        outputs: decode_cts(ctx, &mut r)?,
        compute_seconds: f64::from_le_bytes(secs),
    })
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = write_frame(&mut w.stdin, QUIT, &[]);
        }
        for w in &mut self.workers {
            let _ = w.child.wait();
        }
    }
}

/// Runs `task` on every shard in this process, shards in parallel on rayon threads.
pub fn run_in_process(
    pc: &PublicContext<CkksContext>,
    task: &Task,
    shards: &[Vec<Ciphertext>],
) -> Result<Vec<ShardResult>> {
    on_pool(|| {
        shards
            .par_iter()
            .map(|shard| {
                let t = Instant::now();
                let outputs = compute(pc, task, shard)?;
                Ok(ShardResult {
                    outputs,
                    compute_seconds: t.elapsed().as_secs_f64(),
                })
            })
            .collect()
    })
}

/// Training steps on worker processes: each shard of a step is one [`Task::LogisticStep`] job;
/// more shards than workers run in rounds. The first time a batch comes, its shards are
/// stored on the workers; from then on a step sends the weights only (one ciphertext per
/// worker) and gets back the partial gradient and logits.
impl ShardRunner for WorkerPool {
    fn setup(&mut self, ev: &PublicEval) -> Result<()> {
        let mut bytes = Vec::new();
        PublicContext::write_parts(
            &mut bytes,
            &*ev.ctx,
            &ev.public,
            Some(&ev.relin),
            Some(&ev.galois),
            WriteOptions::default(),
        )?;
        // A new context empties the workers' stores.
        self.batch_slots.clear();
        self.send_context(&bytes)
    }

    fn run_step(
        &mut self,
        ev: Eval<'_>,
        layout: &BlockLayout,
        sigmoid: &[f64],
        bound: f64,
        w: &Ciphertext,
        batch: usize,
        shards: &[Vec<BatchCt>],
    ) -> Result<Vec<ShardOutput>> {
        let task = Task::LogisticStep {
            layout: *layout,
            sigmoid: sigmoid.to_vec(),
            bound,
        };
        let ctx = ev.ctx.rlwe();
        let mut outs = Vec::with_capacity(shards.len());
        for (round, group) in shards.chunks(self.len()).enumerate() {
            let slot = match self.batch_slots.get(&(batch, round)) {
                Some(&slot) => slot,
                None => {
                    let slot = self.batch_slots.len() as u32;
                    let data: Vec<Vec<Ciphertext>> = group
                        .iter()
                        .map(|s| s.iter().flat_map(|b| [b.x.clone(), b.y.clone()]).collect())
                        .collect();
                    self.store(ctx, slot, &data)?;
                    self.batch_slots.insert((batch, round), slot);
                    slot
                }
            };
            let results =
                self.run_stored(ctx, &task, std::slice::from_ref(w), slot, group.len())?;
            for r in results {
                let mut it = r.outputs.into_iter();
                let partial = it
                    .next()
                    .ok_or_else(|| Error::Decode("a worker returned no gradient".into()))?;
                outs.push(ShardOutput {
                    partial,
                    logits: it.collect(),
                    compute_seconds: r.compute_seconds,
                });
            }
        }
        Ok(outs)
    }
}

/// Adds the shards' partial results output by output (what an aggregator can do without any
/// key).
pub fn aggregate(ctx: &CkksContext, results: &[ShardResult]) -> Result<Vec<Ciphertext>> {
    let first = results
        .first()
        .ok_or_else(|| Error::InvalidInput("nothing to aggregate".into()))?;
    let mut acc = first.outputs.clone();
    for r in &results[1..] {
        if r.outputs.len() != acc.len() {
            return Err(Error::Shape(
                "shards returned different output counts".into(),
            ));
        }
        for (a, b) in acc.iter_mut().zip(&r.outputs) {
            *a = ctx.add(a, b)?;
        }
    }
    Ok(acc)
}

/// The aggregator's whole job: [`aggregate`] the shards' partial results, then
/// [`Task::finish`] the total, on this process's rayon threads (the workers are idle by then).
/// Needs the public Galois keys for [`Task::finish_steps`], no secret.
pub fn reduce(
    ctx: &CkksContext,
    task: &Task,
    gk: &GaloisKeys,
    results: &[ShardResult],
) -> Result<Vec<Ciphertext>> {
    on_pool(|| {
        aggregate(ctx, results)?
            .iter()
            .map(|total| task.finish(ctx, gk, total))
            .collect()
    })
}
