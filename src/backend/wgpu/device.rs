//! Device plumbing for the wgpu backend: adapter and device, error capture, pipelines, cached
//! tables, the buffer pool and the [`DeviceBuffer`] type.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::backend::{lift_factors, DeviceBuffer, FusedKsLayout, KeySwitchPlan, Trace};
use crate::error::{Error, Result};
use crate::math::{BaseConverter, Modulus, RingContext, ScaleRounder};

const COMMON: &str = include_str!("../../../shaders/common.wgsl");

/// Shader sources and the entry points each defines.
const SHADERS: &[(&str, &str, &[&str])] = &[
    (
        "elementwise",
        include_str!("../../../shaders/elementwise.wgsl"),
        &[
            "add",
            "sub",
            "neg",
            "mul",
            "mul_acc",
            "mul_scalar",
            "add_scalar",
            "tensor_product",
            "moddown_finish",
        ],
    ),
    (
        "ntt",
        include_str!("../../../shaders/ntt.wgsl"),
        &["fwd_stages", "inv_stages", "fwd_tail", "inv_head"],
    ),
    (
        "lincomb",
        include_str!("../../../shaders/lincomb.wgsl"),
        &["lincomb"],
    ),
    (
        "keyswitch",
        include_str!("../../../shaders/keyswitch.wgsl"),
        &["ks_inner", "ks_inner_hoisted"],
    ),
    (
        "rns",
        include_str!("../../../shaders/rns.wgsl"),
        &["base_convert", "scale_round", "mod_up_convert"],
    ),
    (
        "perm",
        include_str!("../../../shaders/perm.wgsl"),
        &["automorphism", "automorphism_ntt"],
    ),
];

/// Freed buffers kept for reuse, at most this many bytes in all.
const POOL_BYTES: u64 = 512 << 20;

/// Usage of every polynomial buffer: bound as storage, copied from and to.
const POLY_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Operations queued per submission at most: bounds the memory (parameter buffers, bind
/// groups) that recorded but unsubmitted work holds.
const MAX_QUEUED: usize = 256;

/// Per-ring tables: `moduli` (8 words per prime) and the four twiddle tables of every prime.
pub(super) struct RingTables {
    pub moduli: wgpu::Buffer,
    pub tw: wgpu::Buffer,
}

type RingKey = (usize, Vec<u32>);

#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Recorded operations waiting for one submission, in recording order, and the last submission.
#[derive(Default)]
struct Queued {
    ops: Vec<wgpu::CommandBuffer>,
    last: Option<wgpu::SubmissionIndex>,
}

/// The device, its queue and every cache.
pub(super) struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    max_binding: u64,
    max_buffer: u64,
    align: u64,
    /// Storage bindings one shader may declare (the fused key switch needs 10).
    max_storage_buffers: u32,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(&'static str, bool, u32), wgpu::ComputePipeline>>,
    rings: Mutex<HashMap<RingKey, Arc<RingTables>>>,
    tables: Mutex<HashMap<Vec<u64>, Arc<wgpu::Buffer>>>,
    /// Params blocks by their words ([`Gpu::params`]).
    params: Mutex<HashMap<Vec<u32>, Arc<wgpu::Buffer>>>,
    pool: Mutex<Pool>,
    queued: Mutex<Queued>,
    /// Errors raised outside an error scope (other threads, drops) and device loss.
    fault: Arc<Mutex<Option<String>>>,
    /// Work counters (`hetensor bench --trace`).
    pub trace: Trace,
}

/// One storage binding: a word range of a buffer.
#[derive(Clone)]
pub(super) struct Bind<'a> {
    binding: u32,
    buf: &'a wgpu::Buffer,
    offset: u64,
    size: u64,
    /// A batch the dispatch streams (counted by `--trace`), not a table.
    streamed: bool,
}

impl<'a> Bind<'a> {
    /// Words `offset..offset + len` of `buf`.
    pub fn range(binding: u32, buf: &'a wgpu::Buffer, offset: usize, len: usize) -> Self {
        Self {
            binding,
            buf,
            offset: 4 * offset as u64,
            size: 4 * len as u64,
            streamed: true,
        }
    }

    /// The whole buffer.
    pub fn whole(binding: u32, buf: &'a wgpu::Buffer) -> Self {
        Self {
            binding,
            buf,
            offset: 0,
            size: buf.size(),
            streamed: false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gpu {
    pub fn new() -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| {
            Error::BackendUnavailable(format!(
                "wgpu: no adapter found ({e}); install a Vulkan driver (e.g. mesa-vulkan-drivers for \
                 lavapipe) or set WGPU_BACKEND=gl"
            ))
        })?;
        let info = adapter.get_info();
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(Error::BackendUnavailable(format!(
                "wgpu: adapter {} ({:?}) has no compute shaders",
                info.name, info.backend
            )));
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("hetensor"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::BackendUnavailable(format!("wgpu: cannot open {}: {e}", info.name)))?;
        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&sink).get_or_insert_with(|| format!("wgpu: {e}"));
        }));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            lock(&sink).get_or_insert_with(|| format!("wgpu: device lost ({reason:?}): {msg}"));
        });
        Ok(Self {
            max_binding: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            max_buffer: limits.max_buffer_size,
            align: limits.min_storage_buffer_offset_alignment as u64,
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
            device,
            queue,
            info,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            rings: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            params: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::default()),
            queued: Mutex::new(Queued::default()),
            fault: lost,
            trace: Trace::default(),
        })
    }

    fn check_fault(&self) -> Result<()> {
        match lock(&self.fault).clone() {
            Some(e) => Err(Error::Backend(e)),
            None => Ok(()),
        }
    }

    /// Records one operation with `f` into its own command buffer and queues it; validation and
    /// out-of-memory errors become [`Error::Backend`] instead of wgpu's default panic, and a
    /// failed operation is never submitted. Queued operations go to the device together, in
    /// recording order, as one submission (see [`Gpu::flush`]): the per-submission cost and
    /// the wait are paid once per batch of operations (a whole key switch, a tensor layer),
    /// not once per backend call. Queue order makes reusing pooled buffers safe.
    pub fn run<T>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<T>) -> Result<T> {
        self.check_fault()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self.device.create_command_encoder(&Default::default());
        let out = f(&mut enc);
        let cmd = out.is_ok().then(|| enc.finish());
        let verr = pollster::block_on(val.pop());
        let merr = pollster::block_on(oom.pop());
        if let Some(e) = verr.or(merr) {
            return Err(Error::Backend(format!("wgpu: {e}")));
        }
        let out = out?;
        let full = {
            let mut q = lock(&self.queued);
            q.ops.extend(cmd);
            q.ops.len() >= MAX_QUEUED
        };
        if full {
            self.flush(false)?;
        }
        Ok(out)
    }

    /// Submits every queued operation as one submission. With `wait`, blocks until all
    /// submitted work has finished; without, waits only for the previous submission, so at
    /// most two batches are in flight.
    pub fn flush(&self, wait: bool) -> Result<()> {
        self.check_fault()?;
        let (prev, last) = {
            // Held while submitting, so that submissions keep the recording order.
            let mut q = lock(&self.queued);
            let ops = std::mem::take(&mut q.ops);
            let n = ops.len();
            let prev = q.last.clone();
            if n > 0 {
                let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
                let idx = self.queue.submit(ops);
                if let Some(e) = pollster::block_on(val.pop()) {
                    let msg = format!(
                        "wgpu: a submission of {n} queued operations failed ({e}); results on \
                         this device are undefined, create a new backend"
                    );
                    lock(&self.fault).get_or_insert_with(|| msg.clone());
                    return Err(Error::Backend(msg));
                }
                q.last = Some(idx);
            }
            (prev, q.last.clone())
        };
        let target = if wait { last } else { prev };
        if let Some(idx) = target {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(idx),
                    timeout: None,
                })
                .map_err(|e| Error::Backend(format!("wgpu: waiting for the device: {e}")))?;
        }
        self.check_fault()
    }

    /// The pipeline of `entry` with the `ALIGNED` override (see `shaders/common.wgsl`) and, when
    /// `stages > 0`, `STAGES` (`shaders/ntt.wgsl`).
    fn pipeline(
        &self,
        entry: &'static str,
        aligned: bool,
        stages: u32,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = lock(&self.pipelines).get(&(entry, aligned, stages)) {
            return Ok(p.clone());
        }
        let &(name, src, _) = SHADERS
            .iter()
            .find(|(_, _, entries)| entries.contains(&entry))
            .ok_or_else(|| Error::Backend(format!("wgpu: no shader defines `{entry}`")))?;
        let module = {
            let mut modules = lock(&self.modules);
            modules
                .entry(name)
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(name),
                            source: wgpu::ShaderSource::Wgsl(format!("{COMMON}\n{src}").into()),
                        })
                })
                .clone()
        };
        let mut constants = vec![("ALIGNED", if aligned { 1.0 } else { 0.0 })];
        if stages > 0 {
            constants.push(("STAGES", stages as f64));
        }
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    ..Default::default()
                },
                cache: None,
            });
        lock(&self.pipelines).insert((entry, aligned, stages), p.clone());
        Ok(p)
    }

    /// One compute pass running `entry` on `groups` workgroups (a 2-D grid past 65,535).
    /// `aligned`: every workgroup's items lie in one row (`ALIGNED` in the shaders).
    pub fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        entry: &'static str,
        aligned: bool,
        binds: &[Bind],
        groups: u64,
    ) -> Result<()> {
        self.dispatch_stages(enc, entry, (aligned, 0), binds, groups)
    }

    /// [`Gpu::dispatch`] of a pipeline specialized to `stages` (the `STAGES` override of
    /// `shaders/ntt.wgsl`'s global passes, so that their loops unroll and their words stay in
    /// registers; 0: none).
    pub fn dispatch_stages(
        &self,
        enc: &mut wgpu::CommandEncoder,
        entry: &'static str,
        (aligned, stages): (bool, u32),
        binds: &[Bind],
        groups: u64,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let pipeline = self.pipeline(entry, aligned, stages)?;
        self.trace.launch(kernel_bytes(entry, binds));
        let entries: Vec<wgpu::BindGroupEntry> = binds
            .iter()
            .map(|b| wgpu::BindGroupEntry {
                binding: b.binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buf,
                    offset: b.offset,
                    size: NonZeroU64::new(b.size),
                }),
            })
            .collect();
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        const MAX: u64 = 65_535;
        let x = groups.min(MAX);
        let y = groups.div_ceil(x);
        if y > MAX {
            return Err(Error::Backend(format!(
                "wgpu: {groups} workgroups exceed a 2-D grid"
            )));
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(entry),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x as u32, y as u32, 1);
        Ok(())
    }

    /// Records a copy of `words` words between word offsets of two buffers.
    pub fn copy(
        &self,
        enc: &mut wgpu::CommandEncoder,
        (src, s): (&wgpu::Buffer, usize),
        (dst, d): (&wgpu::Buffer, usize),
        words: usize,
    ) {
        if words > 0 {
            self.trace.device_copy(4 * words);
            enc.copy_buffer_to_buffer(src, 4 * s as u64, dst, 4 * d as u64, Some(4 * words as u64));
        }
    }

    /// Records zeroing a whole buffer.
    pub fn clear(&self, enc: &mut wgpu::CommandEncoder, buf: &wgpu::Buffer) {
        self.trace.device_copy(buf.size() as usize);
        enc.clear_buffer(buf, 0, None);
    }

    /// A small read-only params buffer, cached by its words: the params of an operation at a
    /// given shape repeat call after call, so they are uploaded once, not per dispatch. The
    /// cache is dropped whole when it reaches `PARAMS_CACHED` entries (e.g. under ever-new
    /// scalars).
    pub fn params(&self, words: &[u32]) -> Arc<wgpu::Buffer> {
        let mut v = words.to_vec();
        v.resize(v.len().max(8), 0);
        if let Some(b) = lock(&self.params).get(&v) {
            return b.clone();
        }
        self.trace.upload(4 * v.len());
        let b = Arc::new(
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: bytemuck::cast_slice(&v),
                    usage: wgpu::BufferUsages::STORAGE,
                }),
        );
        let mut cache = lock(&self.params);
        if cache.len() >= PARAMS_CACHED {
            cache.clear();
        }
        cache.insert(v, b.clone());
        b
    }

    /// A new storage buffer holding `words`. Created initialized (never from the pool), so the
    /// copy cannot overtake queued operations that still use a pooled buffer.
    pub fn upload(self: &Arc<Self>, words: &[u32]) -> Result<WgpuBuffer> {
        if words.is_empty() {
            return self.alloc(0);
        }
        let size = 4 * words.len() as u64;
        if size > self.max_buffer {
            return Err(Error::Backend(format!(
                "wgpu: a buffer of {} MiB exceeds the adapter's limit of {} MiB",
                size >> 20,
                self.max_buffer >> 20
            )));
        }
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.trace.alloc(std::mem::size_of_val(words));
        self.trace.upload(std::mem::size_of_val(words));
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("polys"),
                contents: bytemuck::cast_slice(words),
                usage: POLY_USAGE,
            });
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(Error::Backend(format!("wgpu: {e}")));
        }
        Ok(WgpuBuffer {
            buf: Some(buf),
            gpu: self.clone(),
        })
    }

    /// A storage buffer of `words` words (from the pool when one of that size is free; its old
    /// contents remain, so callers overwrite or clear it).
    pub fn alloc(self: &Arc<Self>, words: usize) -> Result<WgpuBuffer> {
        let size = (4 * words as u64).max(4);
        if size > self.max_buffer {
            return Err(Error::Backend(format!(
                "wgpu: a buffer of {} MiB exceeds the adapter's limit of {} MiB",
                size >> 20,
                self.max_buffer >> 20
            )));
        }
        let pooled = {
            let mut pool = lock(&self.pool);
            let b = pool.free.get_mut(&size).and_then(|v| v.pop());
            if b.is_some() {
                pool.bytes -= size;
            }
            b
        };
        self.trace.alloc(size as usize);
        let buf = pooled.unwrap_or_else(|| self.create_poly_buffer(size));
        Ok(WgpuBuffer {
            buf: Some(buf),
            gpu: self.clone(),
        })
    }

    /// A new (uninitialized) polynomial buffer of `size` bytes.
    fn create_poly_buffer(&self, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("polys"),
            size,
            usage: POLY_USAGE,
            mapped_at_creation: false,
        })
    }

    fn release(&self, buf: wgpu::Buffer) {
        let size = buf.size();
        let mut pool = lock(&self.pool);
        if pool.bytes + size <= POOL_BYTES {
            pool.bytes += size;
            pool.free.entry(size).or_default().push(buf);
        }
    }

    /// Copies `words` words back to the host.
    pub fn read(&self, buf: &wgpu::Buffer, words: usize) -> Result<Vec<u32>> {
        if words == 0 {
            return Ok(Vec::new());
        }
        let size = 4 * words as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.run(|enc| {
            enc.copy_buffer_to_buffer(buf, 0, &staging, 0, Some(size));
            Ok(())
        })?;
        Trace::add(&self.trace.download_bytes, size as usize);
        self.flush(true)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Backend(format!("wgpu: waiting for a download: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Backend("wgpu: download callback dropped".into()))?
            .map_err(|e| Error::Backend(format!("wgpu: mapping a download: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Backend(format!("wgpu: mapping a download: {e:?}")))?;
            view.chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        staging.unmap();
        Ok(out)
    }

    /// Errors unless `words` words fit one storage binding.
    pub fn check_binding(&self, words: usize) -> Result<()> {
        if 4 * words as u64 > self.max_binding {
            return Err(Error::Backend(format!(
                "wgpu: {} MiB exceed the adapter's storage binding limit of {} MiB",
                (4 * words as u64) >> 20,
                self.max_binding >> 20
            )));
        }
        Ok(())
    }

    /// Splits `count` polynomials of `poly_words` words into `(start, len)` chunks that each fit
    /// one storage binding at an aligned offset.
    pub fn poly_chunks(&self, count: usize, poly_words: usize) -> Result<Vec<(usize, usize)>> {
        if count == 0 || poly_words == 0 {
            return Ok(Vec::new());
        }
        self.check_binding(poly_words)?;
        let per = (self.max_binding / (4 * poly_words as u64)) as usize;
        if per >= count {
            return Ok(vec![(0, count)]);
        }
        if !(4 * poly_words as u64).is_multiple_of(self.align) {
            return Err(Error::Backend(format!(
                "wgpu: batch of {count} polynomials exceeds one storage binding and cannot be split \
                 at {}-byte offsets",
                self.align
            )));
        }
        Ok((0..count)
            .step_by(per)
            .map(|s| (s, per.min(count - s)))
            .collect())
    }

    /// Whether every batch of `words` fits one binding and the adapter allows the fused key
    /// switch's 10 storage bindings (`shaders/keyswitch.wgsl`); if not, the backend composes
    /// key switching from smaller operations.
    pub fn fits_fused_key_switch(&self, words: &[usize]) -> bool {
        self.max_storage_buffers >= 10 && words.iter().all(|&w| 4 * w as u64 <= self.max_binding)
    }

    /// Rows (of `row_words` words) that fit one binding.
    pub fn row_chunk(&self, row_words: usize) -> Result<usize> {
        self.check_binding(row_words)?;
        Ok((self.max_binding / (4 * row_words as u64)) as usize)
    }

    fn upload_table(&self, label: &str, words: &[u32]) -> Result<wgpu::Buffer> {
        self.check_binding(words.len())?;
        let mut v = words.to_vec();
        v.resize(v.len().max(8), 0);
        self.trace.upload(4 * v.len());
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(&v),
                usage: wgpu::BufferUsages::STORAGE,
            }))
    }

    /// Moduli and twiddle tables of a ring, uploaded once per (N, primes): the tables depend
    /// on nothing else, so equal rings share them.
    pub fn ring_tables(&self, ring: &RingContext) -> Result<Arc<RingTables>> {
        let key: RingKey = (ring.n(), ring.moduli().iter().map(|m| m.value()).collect());
        if let Some(t) = lock(&self.rings).get(&key) {
            return Ok(t.clone());
        }
        let n = ring.n();
        let mut moduli = Vec::with_capacity(8 * ring.len());
        let mut tw = Vec::with_capacity(4 * n * ring.len());
        for i in 0..ring.len() {
            let m = ring.modulus(i);
            let plan = ring.plan(i);
            let (ni, nis) = plan.n_inv();
            moduli.extend(modulus_words(m));
            moduli.extend([ni, nis, 0, 0]);
            let (a, b, c, d) = plan.tables();
            for t in [a, b, c, d] {
                tw.extend_from_slice(t);
            }
        }
        let t = Arc::new(RingTables {
            moduli: self.upload_table("moduli", &moduli)?,
            tw: self.upload_table("twiddles", &tw)?,
        });
        lock(&self.rings).insert(key, t.clone());
        Ok(t)
    }

    fn cached_table(
        &self,
        key: Vec<u64>,
        label: &str,
        build: impl FnOnce() -> Vec<u32>,
    ) -> Result<Arc<wgpu::Buffer>> {
        if let Some(t) = lock(&self.tables).get(&key) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.upload_table(label, &build())?);
        lock(&self.tables).insert(key, t.clone());
        Ok(t)
    }

    /// Base-conversion table (layout in `shaders/rns.wgsl`), cached by the two prime lists.
    pub fn converter_table(&self, conv: &BaseConverter) -> Result<Arc<wgpu::Buffer>> {
        let (from, to) = (conv.from(), conv.to());
        let mut key = vec![0, from.len() as u64];
        key.extend(from.iter().chain(to).map(|m| m.value() as u64));
        self.cached_table(key, "base conversion", || converter_words(conv))
    }

    /// The fused key switch's table of one plan (`shaders/keyswitch.wgsl`, `mod_up_convert` in
    /// `shaders/rns.wgsl`), cached by the ring's primes and the plan's limb layout: a header
    /// (`[0]` ModUp's rows, `[1]` the `lrow` offset, `[2]` the `[P]_q` offset), at `8 + 3r`
    /// the descriptor of ModUp row `r` (its digit's conversion table, that digit's first row
    /// of `d`, the row's target index), each digit's conversion table, `layout.lrow`, and
    /// `[P]_q` for every limb of `plan.qp`.
    pub fn key_switch_table(
        &self,
        ring: &RingContext,
        plan: &KeySwitchPlan,
        key_limbs: &[usize],
        layout: &FusedKsLayout,
    ) -> Result<Arc<wgpu::Buffer>> {
        let mut key = vec![2, ring.n() as u64, ring.len() as u64];
        key.extend(ring.moduli().iter().map(|m| m.value() as u64));
        let lists = [&plan.q[..], &plan.p[..], key_limbs]
            .into_iter()
            .chain(plan.digits.iter().map(|d| &d.limbs[..]));
        for list in lists {
            key.push(list.len() as u64);
            key.extend(list.iter().map(|&l| l as u64));
        }
        self.cached_table(key, "key switching", || {
            let rows = layout.ext_primes.len();
            let mut convs = Vec::new();
            let mut desc = Vec::with_capacity(3 * rows);
            let base = 8 + 3 * rows;
            for (dg, &s0) in plan.digits.iter().zip(&layout.starts) {
                let t = (base + convs.len()) as u32;
                desc.extend((0..dg.rest.len()).flat_map(|j| [t, s0 as u32, j as u32]));
                convs.extend(converter_words(&dg.up));
            }
            let lrow = base + convs.len();
            let lfac = lrow + layout.lrow.len();
            let mut v = vec![rows as u32, lrow as u32, lfac as u32, 0, 0, 0, 0, 0];
            v.extend(desc);
            v.extend(convs);
            v.extend_from_slice(&layout.lrow);
            v.extend(lift_factors(ring, &plan.qp, &plan.p));
            v
        })
    }

    /// Scale-and-round table (layout in `shaders/rns.wgsl`), cached by primes and multiplier.
    pub fn rounder_table(&self, r: &ScaleRounder) -> Result<Arc<wgpu::Buffer>> {
        let (q, c) = (r.from_q(), r.to());
        let mut key = vec![1, q.len() as u64, r.multiplier()];
        key.extend(q.iter().chain(c).map(|m| m.value() as u64));
        self.cached_table(key, "scale and round", || {
            let mut v = vec![0u32; 8];
            v[0] = q.len() as u32;
            v[1] = c.len() as u32;
            for (m, &th) in q.iter().zip(r.frac_table()) {
                v.extend([m.value(), th as u32, (th >> 32) as u32]);
            }
            for (cj, l) in c.iter().zip(r.lambda_table()) {
                v.extend(modulus_words(cj));
                v.extend([l, cj.shoup(l), 0, 0]);
            }
            v.extend_from_slice(r.int_part_table());
            v
        })
    }
}

/// Params blocks kept by [`Gpu::params`] (a few hundred bytes each).
const PARAMS_CACHED: usize = 4096;

/// Entry points that read their binding 0 before writing it (in place).
const IN_PLACE: &[&str] = &[
    "add",
    "sub",
    "neg",
    "mul",
    "mul_acc",
    "mul_scalar",
    "add_scalar",
    "fwd_stages",
    "fwd_tail",
    "inv_stages",
    "inv_head",
];

/// The global-memory bytes a dispatch reads and writes, modelled from its bindings as the CUDA
/// backend models its launches (`kernel_words`): each batch bound as a word range counted once
/// (binding 0 twice for in-place entries), a range bound twice (an unused digit slot) once,
/// whole-buffer bindings (tables, params) not at all. A model, not a hardware counter.
fn kernel_bytes(entry: &str, binds: &[Bind]) -> usize {
    let mut seen: Vec<(*const wgpu::Buffer, u64)> = Vec::with_capacity(binds.len());
    let mut bytes = 0;
    for b in binds.iter().filter(|b| b.streamed) {
        let key = (b.buf as *const wgpu::Buffer, b.offset);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let twice = b.binding == 0 && IN_PLACE.contains(&entry);
        bytes += b.size as usize * (1 + twice as usize);
    }
    bytes
}

/// A base converter's table (layout in `shaders/rns.wgsl`).
fn converter_words(conv: &BaseConverter) -> Vec<u32> {
    let (from, to) = (conv.from(), conv.to());
    let mut v = vec![0u32; 8];
    v[0] = from.len() as u32;
    v[1] = to.len() as u32;
    for (i, m) in from.iter().enumerate() {
        let (w, ws) = conv.b_hat_inv_table()[i];
        let f = conv.frac_table()[i];
        v.extend([m.value(), w, ws, f as u32, (f >> 32) as u32]);
    }
    for (j, c) in to.iter().enumerate() {
        let (bits, mu) = c.barrett32();
        v.extend([c.value(), mu, bits, conv.b_mod_c_table()[j]]);
    }
    v.extend_from_slice(conv.b_hat_mod_c_table());
    v
}

/// `q, mu32, bits, 2^32 mod q` (the first words of a `moduli` entry, see `shaders/common.wgsl`).
fn modulus_words(m: &Modulus) -> [u32; 4] {
    let (bits, mu) = m.barrett32();
    [
        m.value(),
        mu,
        bits,
        ((1u64 << 32) % m.value() as u64) as u32,
    ]
}

/// Device memory of one [`crate::backend::PolyBatch`]; returned to the pool when dropped.
pub struct WgpuBuffer {
    pub(super) buf: Option<wgpu::Buffer>,
    pub(super) gpu: Arc<Gpu>,
}

impl WgpuBuffer {
    pub(super) fn get(&self) -> &wgpu::Buffer {
        // Only `drop` takes the buffer out.
        self.buf.as_ref().expect("wgpu buffer present until drop")
    }
}

impl std::fmt::Debug for WgpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WgpuBuffer({} bytes)",
            self.buf.as_ref().map_or(0, |b| b.size())
        )
    }
}

impl Drop for WgpuBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.gpu.release(b);
        }
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn clone_buffer(&self) -> Box<dyn DeviceBuffer> {
        let src = self.get();
        let size = src.size();
        // Errors here surface through the uncaptured-error sink at the next operation.
        let out = self
            .gpu
            .alloc((size / 4) as usize)
            .unwrap_or_else(|_| WgpuBuffer {
                buf: Some(self.gpu.create_poly_buffer(size)),
                gpu: self.gpu.clone(),
            });
        let r = self.gpu.run(|enc| {
            self.gpu
                .copy(enc, (src, 0), (out.get(), 0), size as usize / 4);
            Ok(())
        });
        if let Err(e) = r {
            lock(&self.gpu.fault).get_or_insert_with(|| e.to_string());
        }
        Box::new(out)
    }

    fn wipe(&mut self) {
        let b = self.get();
        // Submitted now: secret words must not wait for a later flush to be overwritten.
        let r = self
            .gpu
            .run(|enc| {
                self.gpu.clear(enc, b);
                Ok(())
            })
            .and_then(|()| self.gpu.flush(false));
        if let Err(e) = r {
            lock(&self.gpu.fault).get_or_insert_with(|| e.to_string());
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
