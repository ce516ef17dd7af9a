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
//! | 2 `JOB` | parent → worker | `u32` JSON length, the [`Task`] as JSON, `u32` count, ciphertexts |
//! | 3 `RESULT` | worker → parent | `f64` compute seconds, `u32` count, ciphertexts |
//! | 4 `ERROR` | worker → parent | UTF-8 message |
//! | 5 `QUIT` | parent → worker | empty |

mod tasks;

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
use crate::serialize::{self, PublicContext, WriteOptions};
use crate::train::logistic::{BatchCt, ShardOutput, ShardRunner};
use crate::train::{BlockLayout, Eval, PublicEval};

const CONTEXT: u8 = 1;
const JOB: u8 = 2;
const RESULT: u8 = 3;
const ERROR: u8 = 4;
const QUIT: u8 = 5;

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
    let mut payload = Vec::new();
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
    let mut input = BufReader::new(input);
    let mut output = BufWriter::new(output);
    let mut pc: Option<PublicContext<CkksContext>> = None;
    while let Some((tag, payload)) = read_frame(&mut input)? {
        match tag {
            CONTEXT => {
                pc = Some(PublicContext::from_bytes(&payload, backend.clone())?);
            }
            JOB => {
                let reply = run_job(pc.as_ref(), &payload);
                match reply {
                    Ok(bytes) => write_frame(&mut output, RESULT, &bytes)?,
                    Err(e) => write_frame(&mut output, ERROR, e.to_string().as_bytes())?,
                }
            }
            QUIT => break,
            other => return Err(Error::Decode(format!("unknown frame tag {other}"))),
        }
    }
    Ok(())
}

fn run_job(pc: Option<&PublicContext<CkksContext>>, payload: &[u8]) -> Result<Vec<u8>> {
    let pc = pc.ok_or_else(|| Error::InvalidInput("job before any context".into()))?;
    let ctx = pc.context.rlwe();
    let mut r = payload;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| Error::Decode("truncated job".into()))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > r.len() {
        return Err(Error::Decode("truncated task".into()));
    }
    let task: Task =
        serde_json::from_slice(&r[..len]).map_err(|e| Error::Decode(format!("task: {e}")))?;
    r = &r[len..];
    let inputs = decode_cts(ctx, &mut r)?;
    let t = Instant::now();
    let outputs = compute(pc, &task, &inputs)?;
    let seconds = t.elapsed().as_secs_f64();
    let mut out = seconds.to_le_bytes().to_vec();
    encode_cts(ctx, &outputs, &mut out)?;
    Ok(out)
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
}

impl WorkerPool {
    /// Starts `k` workers running `exe worker` (the `hetensor` binary), each limited to
    /// `threads_per_worker` rayon threads (0 = rayon's default).
    pub fn spawn(exe: &Path, k: usize, threads_per_worker: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidInput("need at least one worker".into()));
        }
        let mut workers = Vec::with_capacity(k);
        for _ in 0..k {
            let mut cmd = Command::new(exe);
            cmd.arg("worker")
                .stdin(Stdio::piped())
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
        Ok(Self { workers })
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
        if shards.len() > self.workers.len() {
            return Err(Error::InvalidInput(format!(
                "{} shards for {} workers",
                shards.len(),
                self.workers.len()
            )));
        }
        let task_json = serde_json::to_vec(task).map_err(|e| Error::InvalidInput(e.to_string()))?;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .zip(shards)
                .map(|(w, shard)| {
                    let task_json = &task_json;
                    s.spawn(move || -> Result<ShardResult> {
                        let mut job = (task_json.len() as u32).to_le_bytes().to_vec();
                        job.extend_from_slice(task_json);
                        encode_cts(ctx, shard, &mut job)?;
                        write_frame(&mut w.stdin, JOB, &job)?;
                        drop(job);
                        match read_frame(&mut w.stdout)? {
                            Some((RESULT, bytes)) => {
                                let mut r = bytes.as_slice();
                                let mut secs = [0u8; 8];
                                r.read_exact(&mut secs)
                                    .map_err(|_| Error::Decode("truncated result".into()))?;
                                Ok(ShardResult {
                                    outputs: decode_cts(ctx, &mut r)?,
                                    compute_seconds: f64::from_le_bytes(secs),
                                })
                            }
                            Some((ERROR, msg)) => Err(Error::Backend(format!(
                                "worker failed: {}",
                                String::from_utf8_lossy(&msg)
                            ))),
                            Some((tag, _)) => {
                                Err(Error::Decode(format!("unexpected frame {tag} from worker")))
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
}

/// Training steps on worker processes: each shard of a step is one [`Task::LogisticStep`] job
/// (the weights and the shard's batch ciphertexts go out, the partial gradient and logits come
/// back); more shards than workers run in rounds. The workers are stateless, so the data
/// ciphertexts travel with every step.
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
        self.send_context(&bytes)
    }

    fn run_step(
        &mut self,
        ev: Eval<'_>,
        layout: &BlockLayout,
        sigmoid: &[f64],
        bound: f64,
        w: &Ciphertext,
        shards: &[Vec<BatchCt>],
    ) -> Result<Vec<ShardOutput>> {
        let task = Task::LogisticStep {
            layout: *layout,
            sigmoid: sigmoid.to_vec(),
            bound,
        };
        let jobs: Vec<Vec<Ciphertext>> = shards
            .iter()
            .map(|s| {
                let mut v = vec![w.clone()];
                for b in s {
                    v.extend([b.x.clone(), b.y.clone()]);
                }
                v
            })
            .collect();
        let mut outs = Vec::with_capacity(shards.len());
        for round in jobs.chunks(self.len()) {
            for r in self.run(ev.ctx.rlwe(), &task, round)? {
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
    aggregate(ctx, results)?
        .iter()
        .map(|total| task.finish(ctx, gk, total))
        .collect()
}
