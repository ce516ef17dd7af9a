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
//! | tag | direction | payload | largest `len` |
//! |---|---|---|---|
//! | 1 `CONTEXT` | parent → worker | a serialized public context | `max_frame_bytes` |
//! | 2 `JOB` | parent → worker | `u32` JSON length, the [`Task`] as JSON, `u32` count, ciphertexts, `u32` count, slots | `max_frame_bytes` |
//! | 3 `RESULT` | worker → parent | `f64` compute seconds, `u32` count, ciphertexts | [`MAX_RESULT_BYTES`] |
//! | 4 `ERROR` | worker → parent | UTF-8 message | [`MAX_ERROR_BYTES`] |
//! | 5 `QUIT` | parent → worker | empty | 0 |
//! | 6 `STORE` | parent → worker | `u32` slot, `u32` count, ciphertexts | [`WorkerLimits::max_store_frame`] |
//! | 7 `STORED` | worker → parent | empty | 0 |
//! | 8 `DROP` | parent → worker | `u32` slot | 4 |
//! | 9 `DROPPED` | worker → parent | empty | 0 |
//!
//! A job's inputs are its own ciphertexts followed by those stored under each of its slots:
//! data that every step of a job reuses (a training set's shard) crosses the pipe once
//! ([`WorkerPool::store`]), and a step sends only what changes (the weights, or nothing).
//! `DROP` frees a slot ([`WorkerPool::drop_slot`]); a new `CONTEXT` frees them all.
//! Every `JOB`, `STORE` and `DROP` gets exactly one answer (`RESULT`, `STORED`, `DROPPED`, or
//! an `ERROR` saying why, after which the worker goes on); `CONTEXT` and `QUIT` get none.
//!
//! A worker holds at most [`WorkerLimits::max_slots`] slots and
//! [`WorkerLimits::max_stored_bytes`] bytes of stored ciphertexts (in memory); a `STORE`
//! beyond either is answered `ERROR` ([`Error::LimitExceeded`]) and changes nothing.
//!
//! **Protocol errors** end the worker, always after an `ERROR` frame that says what happened
//! ([`Error::Protocol`]): an unknown tag, a length above the tag's bound in the table (checked
//! before anything is reserved, so a hostile length allocates nothing), a stream that ends
//! inside a frame, a frame whose rest does not arrive within
//! [`WorkerLimits::frame_timeout`] of its first byte (idle time between frames is unlimited),
//! and a `CONTEXT` that does not decode (its error is then the answer the parent reads to its
//! next request).

pub mod parties;
pub mod session;
mod tasks;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
const DROP: u8 = 8;
const DROPPED: u8 = 9;

/// Largest `RESULT` frame a parent accepts (8 GiB).
pub const MAX_RESULT_BYTES: u64 = 8 << 30;
/// Largest `ERROR` frame either side accepts (1 MiB of message).
pub const MAX_ERROR_BYTES: u64 = 1 << 20;

/// What a worker holds and accepts (the flags of `hetensor worker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Most slots with stored ciphertexts (`--max-slots`, default 1024).
    pub max_slots: usize,
    /// Most bytes of stored ciphertexts, counted as they sit in memory (`--max-stored-mb`,
    /// default 4096 MiB).
    pub max_stored_bytes: u64,
    /// Largest `CONTEXT` or `JOB` frame (`--max-frame-mb`, default 4096 MiB).
    pub max_frame_bytes: u64,
    /// Once a frame's first byte has arrived, the rest must arrive within this
    /// (`--frame-timeout-secs`, default 30; `None` waits forever).
    pub frame_timeout: Option<Duration>,
    /// How the `CONTEXT` is decoded (`--allow-insecure` accepts parameters marked insecure
    /// for testing; by default they are refused, as the constructors refuse them).
    pub decode: DecodeOptions,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            max_slots: 1024,
            max_stored_bytes: 4096 << 20,
            max_frame_bytes: 4096 << 20,
            frame_timeout: Some(Duration::from_secs(30)),
            decode: DecodeOptions::default(),
        }
    }
}

impl WorkerLimits {
    /// Largest `STORE` frame: what fits the store plus 1/16 and 64 KiB for the serialized
    /// form's headers (a serialized ciphertext is never larger than its words in memory plus
    /// a few dozen bytes: residues are bit-packed at their prime's width ≤ 30 bits, and a
    /// ciphertext has at least 2 × 1024 words). A larger `STORE` could never be accepted.
    pub fn max_store_frame(&self) -> u64 {
        self.max_stored_bytes
            .saturating_add(self.max_stored_bytes / 16)
            .saturating_add(64 << 10)
    }

    /// The `hetensor worker` flags that give these limits. Sizes are whole MiB (rounded up).
    pub fn to_args(&self) -> Vec<String> {
        let mib = |b: u64| b.div_ceil(1 << 20).to_string();
        let mut args: Vec<String> = vec![
            "--max-slots".into(),
            self.max_slots.to_string(),
            "--max-stored-mb".into(),
            mib(self.max_stored_bytes),
            "--max-frame-mb".into(),
            mib(self.max_frame_bytes),
            "--frame-timeout-secs".into(),
            self.frame_timeout
                .map_or(0.0, |t| t.as_secs_f64())
                .to_string(),
        ];
        if self.decode.allow_insecure {
            args.push("--allow-insecure".into());
        }
        args
    }

    /// The largest payload a parent → worker frame with `tag` may have, `None` for a tag the
    /// worker does not take.
    fn frame_bound(&self, tag: u8) -> Option<u64> {
        match tag {
            CONTEXT | JOB => Some(self.max_frame_bytes),
            STORE => Some(self.max_store_frame()),
            DROP => Some(4),
            QUIT => Some(0),
            _ => None,
        }
    }
}

/// The largest payload a worker → parent frame with `tag` may have.
fn answer_bound(tag: u8) -> Option<u64> {
    match tag {
        RESULT => Some(MAX_RESULT_BYTES),
        ERROR => Some(MAX_ERROR_BYTES),
        STORED | DROPPED => Some(0),
        _ => None,
    }
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        CONTEXT => "CONTEXT",
        JOB => "JOB",
        RESULT => "RESULT",
        ERROR => "ERROR",
        QUIT => "QUIT",
        STORE => "STORE",
        STORED => "STORED",
        DROP => "DROP",
        DROPPED => "DROPPED",
        _ => "unknown",
    }
}

pub(crate) fn write_frame(w: &mut dyn Write, tag: u8, payload: &[u8]) -> Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(payload.len() as u64).to_le_bytes())?;
    w.write_all(payload)?;
    w.flush()?;
    Ok(())
}

/// Reads the first byte of a frame, its tag; `None` at a clean end of stream.
pub(crate) fn read_tag(r: &mut dyn Read) -> Result<Option<u8>> {
    let mut tag = [0u8; 1];
    loop {
        match r.read(&mut tag) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(tag[0])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads the rest of a frame whose tag has been read: the length, checked against `bound`
/// (`None`: the tag is unknown) before anything is reserved, then the payload, which grows
/// with the bytes that actually arrive.
pub(crate) fn read_frame_rest(r: &mut dyn Read, tag: u8, bound: Option<u64>) -> Result<Vec<u8>> {
    let bound = bound.ok_or_else(|| Error::Protocol(format!("unknown frame tag {tag}")))?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| {
        Error::Protocol(format!(
            "the stream ended inside the length of a {} frame ({e})",
            tag_name(tag)
        ))
    })?;
    let len = u64::from_le_bytes(len);
    if len > bound {
        return Err(Error::Protocol(format!(
            "a {} frame of {len} bytes; at most {bound} are allowed",
            tag_name(tag)
        )));
    }
    let payload = crate::data::read_growing(r, len, 0)?;
    if payload.len() as u64 != len {
        return Err(Error::Protocol(format!(
            "truncated {} frame: the stream ended after {} of its {len} bytes",
            tag_name(tag),
            payload.len()
        )));
    }
    Ok(payload)
}

/// Reads one answer frame (parent side); `None` at a clean end of stream.
fn read_answer(r: &mut dyn Read) -> Result<Option<(u8, Vec<u8>)>> {
    let Some(tag) = read_tag(r)? else {
        return Ok(None);
    };
    Ok(Some((tag, read_frame_rest(r, tag, answer_bound(tag))?)))
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
    r.read_exact(&mut n).map_err(|_| Error::Truncated {
        what: "ciphertext count".into(),
    })?;
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

/// What the worker's reader thread hands over.
enum Incoming {
    /// A frame's first byte arrived: its rest is due within the timeout.
    Started,
    /// A whole frame.
    Frame(u8, Vec<u8>),
    /// The stream ended between frames.
    End,
    /// A protocol or I/O error; the reader has stopped.
    Failed(Error),
}

/// Reads frames from `input` on its own thread (a pipe has no read timeout, so the serving
/// thread waits on a channel with one instead). The channel holds nothing: the reader reads
/// the next frame's first byte, then waits until the serving thread is ready for it, so the
/// timeout counts from then, and nothing of the next frame but that byte (and what the
/// `BufReader` holds) is read while a frame is being served.
fn spawn_reader(
    mut input: impl Read + Send + 'static,
    limits: WorkerLimits,
) -> Result<Receiver<Incoming>> {
    let (tx, rx) = sync_channel(0);
    std::thread::Builder::new()
        .name("worker-reader".into())
        .spawn(move || loop {
            let tag = match read_tag(&mut input) {
                Ok(Some(tag)) => tag,
                Ok(None) => {
                    let _ = tx.send(Incoming::End);
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Failed(e));
                    return;
                }
            };
            if tx.send(Incoming::Started).is_err() {
                return;
            }
            match read_frame_rest(&mut input, tag, limits.frame_bound(tag)) {
                Ok(payload) => {
                    if tx.send(Incoming::Frame(tag, payload)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Incoming::Failed(e));
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// Ciphertexts a worker keeps, by slot, within its limits.
#[derive(Default)]
struct Store {
    slots: HashMap<u32, (Vec<Ciphertext>, u64)>,
    bytes: u64,
}

/// Bytes `cts` take in memory.
fn memory_bytes(cts: &[Ciphertext]) -> u64 {
    cts.iter()
        .map(|c| {
            let p = c.polys();
            (p.count() * p.limbs().len() * p.n()) as u64 * 4
        })
        .sum()
}

/// [`serve_with`] with the default [`WorkerLimits`].
pub fn serve(
    input: impl Read + Send + 'static,
    output: impl Write,
    backend: Arc<dyn Backend>,
) -> Result<()> {
    serve_with(input, output, backend, WorkerLimits::default())
}

/// The worker side: serves frames from `input` until `QUIT` or end of input, within `limits`.
/// Computes on `backend`. Errors in a job are reported to the parent, which decides what to
/// do; a protocol error (see the module docs) is reported too, then returned.
///
/// `input` is read on a thread of its own; after a timeout that thread stays blocked in its
/// read until the input ends (a worker process exits instead).
pub fn serve_with(
    input: impl Read + Send + 'static,
    output: impl Write,
    backend: Arc<dyn Backend>,
    limits: WorkerLimits,
) -> Result<()> {
    let mut output = BufWriter::new(output);
    let frames = spawn_reader(BufReader::new(input), limits)?;
    let mut pc: Option<PublicContext<CkksContext>> = None;
    let mut stored = Store::default();
    loop {
        let frame = match frames.recv() {
            Ok(Incoming::Started) => match limits.frame_timeout {
                Some(t) => frames.recv_timeout(t).map_err(|e| match e {
                    RecvTimeoutError::Timeout => Error::Protocol(format!(
                        "a frame started but its rest did not arrive within {} s",
                        t.as_secs_f64()
                    )),
                    RecvTimeoutError::Disconnected => {
                        Error::Protocol("the input reader stopped".into())
                    }
                }),
                None => frames
                    .recv()
                    .map_err(|_| Error::Protocol("the input reader stopped".into())),
            },
            Ok(other) => Ok(other),
            Err(_) => Err(Error::Protocol("the input reader stopped".into())),
        };
        let (tag, payload) = match frame {
            Ok(Incoming::Frame(tag, payload)) => (tag, payload),
            Ok(Incoming::End) => return Ok(()),
            Ok(Incoming::Started) => {
                return protocol_error(
                    &mut output,
                    Error::Protocol("unexpected frame start".into()),
                )
            }
            Ok(Incoming::Failed(e)) | Err(e) => return protocol_error(&mut output, e),
        };
        let reply = match tag {
            CONTEXT => {
                // Stored ciphertexts belong to the old context's parameters, and the old
                // context goes before the new one is decoded (both can be large).
                stored = Store::default();
                drop(pc.take());
                match PublicContext::from_bytes_with(&payload, backend.clone(), limits.decode) {
                    Ok(c) => pc = Some(c),
                    Err(e) => {
                        return protocol_error(
                            &mut output,
                            Error::Protocol(format!("the CONTEXT frame does not decode: {e}")),
                        )
                    }
                }
                continue;
            }
            JOB => on_pool(|| run_job(pc.as_ref(), &stored, &payload)).map(|b| (RESULT, b)),
            STORE => on_pool(|| store(pc.as_ref(), &mut stored, &limits, &payload))
                .map(|_| (STORED, vec![])),
            DROP => drop_slot(&mut stored, &payload).map(|_| (DROPPED, vec![])),
            QUIT => return Ok(()),
            other => {
                return protocol_error(
                    &mut output,
                    Error::Protocol(format!("unknown frame tag {other}")),
                )
            }
        };
        drop(payload);
        match reply {
            Ok((tag, bytes)) => write_frame(&mut output, tag, &bytes)?,
            Err(e) => write_frame(&mut output, ERROR, error_message(&e).as_bytes())?,
        }
    }
}

/// An `ERROR` payload: the error's message, cut to [`MAX_ERROR_BYTES`].
fn error_message(e: &Error) -> String {
    let mut m = e.to_string();
    if m.len() as u64 > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES as usize;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
    }
    m
}

/// Answers `ERROR` with `e` (as far as the output still takes it) and returns `e`.
fn protocol_error(output: &mut dyn Write, e: Error) -> Result<()> {
    let _ = write_frame(output, ERROR, error_message(&e).as_bytes());
    Err(e)
}

fn context(pc: Option<&PublicContext<CkksContext>>) -> Result<&PublicContext<CkksContext>> {
    pc.ok_or_else(|| Error::InvalidInput("data before any context".into()))
}

fn read_u32(r: &mut &[u8], what: &str) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|_| Error::Truncated { what: what.into() })?;
    Ok(u32::from_le_bytes(b))
}

fn store(
    pc: Option<&PublicContext<CkksContext>>,
    stored: &mut Store,
    limits: &WorkerLimits,
    payload: &[u8],
) -> Result<()> {
    let ctx = context(pc)?.context.rlwe();
    let mut r = payload;
    let slot = read_u32(&mut r, "slot")?;
    let old = stored.slots.get(&slot).map(|(_, b)| *b);
    if old.is_none() && stored.slots.len() >= limits.max_slots {
        return Err(Error::LimitExceeded(format!(
            "slot {slot} would be slot {} of at most {} (--max-slots); DROP a slot first",
            stored.slots.len() + 1,
            limits.max_slots
        )));
    }
    let cts = decode_cts(ctx, &mut r)?;
    let bytes = memory_bytes(&cts);
    let total = stored.bytes - old.unwrap_or(0) + bytes;
    if total > limits.max_stored_bytes {
        return Err(Error::LimitExceeded(format!(
            "storing {bytes} bytes under slot {slot} would hold {total} bytes, more than the \
             {} allowed (--max-stored-mb); DROP a slot first",
            limits.max_stored_bytes
        )));
    }
    stored.slots.insert(slot, (cts, bytes));
    stored.bytes = total;
    Ok(())
}

fn drop_slot(stored: &mut Store, payload: &[u8]) -> Result<()> {
    let mut r = payload;
    let slot = read_u32(&mut r, "slot")?;
    let (_, bytes) = stored
        .slots
        .remove(&slot)
        .ok_or_else(|| Error::InvalidInput(format!("no ciphertexts stored under slot {slot}")))?;
    stored.bytes -= bytes;
    Ok(())
}

fn run_job(
    pc: Option<&PublicContext<CkksContext>>,
    stored: &Store,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let pc = context(pc)?;
    let ctx = pc.context.rlwe();
    let mut r = payload;
    let len = read_u32(&mut r, "job")? as usize;
    if len > r.len() {
        return Err(Error::Truncated {
            what: "task".into(),
        });
    }
    let task: Task =
        serde_json::from_slice(&r[..len]).map_err(|e| Error::Decode(format!("task: {e}")))?;
    r = &r[len..];
    let mut inputs = decode_cts(ctx, &mut r)?;
    let slots = read_u32(&mut r, "slot count")?;
    // Each slot at most once: the copies then take at most what the store holds, where a
    // slot listed a million times (4 MB of JOB) would copy its ciphertexts a million times.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..slots {
        let slot = read_u32(&mut r, "slot")?;
        if !seen.insert(slot) {
            return Err(Error::InvalidInput(format!(
                "slot {slot} is listed twice in one job"
            )));
        }
        let (cts, _) = stored.slots.get(&slot).ok_or_else(|| {
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
        Self::spawn_with(exe, k, threads_per_worker, &WorkerLimits::default())
    }

    /// [`Self::spawn`] with workers that keep to `limits` (passed as `hetensor worker` flags).
    pub fn spawn_with(
        exe: &Path,
        k: usize,
        threads_per_worker: usize,
        limits: &WorkerLimits,
    ) -> Result<Self> {
        if k == 0 {
            return Err(Error::InvalidInput("need at least one worker".into()));
        }
        let mut workers = Vec::with_capacity(k);
        for _ in 0..k {
            let mut cmd = Command::new(exe);
            cmd.arg("worker")
                .args(limits.to_args())
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

    /// Frees what the first `n` workers keep under `slot` (an error if one has nothing there).
    pub fn drop_slot(&mut self, slot: u32, n: usize) -> Result<()> {
        self.exchange(DROP, DROPPED, n, &|_| Ok(slot.to_le_bytes().to_vec()))?;
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
                        match read_answer(&mut w.stdout)? {
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
    r.read_exact(&mut secs).map_err(|_| Error::Truncated {
        what: "result".into(),
    })?;
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
