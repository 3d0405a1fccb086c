/**
 * WGSL compute versions of the aggregation kernels (accumulate, finalize) and of top-k (threshold and mask)
 * (radix select on the float bits, same digits as `scalar.ts`), for arrays already in GPU buffers.
 *
 * Buffers: f32 arrays as `array<f32>`; masks as bytes packed four to a u32 word (the byte layout of
 * a Uint8Array, padded to a multiple of 4 bytes; `uploadMask` does this).
 */
import { KernelError } from "./types.ts";
import { keyToBits } from "./scalar.ts";

const WG = 256;

const ACCUMULATE = /* wgsl */ `
struct Params { n: u32, w: f32 }
@group(0) @binding(0) var<storage, read_write> sum: array<f32>;
@group(0) @binding(1) var<storage, read_write> weight: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= p.n) { return; }
  // Masks are bytes packed little-endian into u32 words.
  if (((mask[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu) != 0u) {
    sum[i] = sum[i] + p.w * values[i];
    weight[i] = weight[i] + p.w;
  }
}`;

const FINALIZE = /* wgsl */ `
struct Params { n: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> sum: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> own: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= p.n) { return; }
  let w = weight[i];
  if (w > 0.0) { out[i] = sum[i] / w; } else { out[i] = own[i]; }
}`;

// hist[0..2048) digit counts, hist[2048] NaN flag. state = [prefix, prefixMask, remaining, pass].
const HISTOGRAM = /* wgsl */ `
struct Params { n: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> scores: array<u32>;
@group(0) @binding(1) var<storage, read_write> hist: array<atomic<u32>, 2049>;
@group(0) @binding(2) var<storage, read> state: array<u32, 4>;
@group(0) @binding(3) var<uniform> p: Params;
var<workgroup> local: array<atomic<u32>, 2048>;
fn order_key(b0: u32) -> u32 {
  var b = b0;
  if (b == 0x80000000u) { b = 0u; }
  if ((b & 0x80000000u) != 0u) { return ~b; }
  return b | 0x80000000u;
}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  for (var b = lid; b < 2048u; b += ${WG}u) { atomicStore(&local[b], 0u); }
  workgroupBarrier();
  let round = state[3];
  let shift = select(select(0u, 10u, round == 1u), 21u, round == 0u);
  let dmask = select(0x7ffu, 0x3ffu, round == 2u);
  let prefix = state[0];
  let pmask = state[1];
  var nan = false;
  let stride = nwg.x * ${WG}u;
  for (var i = wid.x * ${WG}u + lid; i < p.n; i += stride) {
    let bits = scores[i];
    if ((bits & 0x7fffffffu) > 0x7f800000u) { nan = true; }
    let key = order_key(bits);
    if ((key & pmask) == prefix) { atomicAdd(&local[(key >> shift) & dmask], 1u); }
  }
  if (nan) { atomicStore(&hist[2048], 1u); }
  workgroupBarrier();
  for (var b = lid; b < 2048u; b += ${WG}u) {
    let c = atomicLoad(&local[b]);
    if (c != 0u) { atomicAdd(&hist[b], c); }
  }
}`;

const SELECT = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> hist: array<u32, 2049>;
@group(0) @binding(1) var<storage, read_write> state: array<u32, 4>;
@compute @workgroup_size(1)
fn main() {
  let round = state[3];
  let shift = select(select(0u, 10u, round == 1u), 21u, round == 0u);
  let dmask = select(0x7ffu, 0x3ffu, round == 2u);
  var remaining = state[2];
  var digit = dmask;
  loop {
    if (digit == 0u) { break; }
    let c = hist[digit];
    if (c >= remaining) { break; }
    remaining -= c;
    digit -= 1u;
  }
  state[0] = state[0] | (digit << shift);
  state[1] = state[1] | (dmask << shift);
  state[2] = remaining;
  state[3] = round + 1u;
  for (var b = 0u; b < 2048u; b++) { hist[b] = 0u; }
}`;

const MASK_COMMON = /* wgsl */ `
struct Params { n: u32, t: u32, ties: u32, blocks: u32 }
fn order_key(b0: u32) -> u32 {
  var b = b0;
  if (b == 0x80000000u) { b = 0u; }
  if ((b & 0x80000000u) != 0u) { return ~b; }
  return b | 0x80000000u;
}`;

// Top-k mask with exact ties, in three steps: tie counts per block of 1024 scores (4 per thread), an
// exclusive scan of those counts, then each thread writes one mask word (4 bytes) keeping a tie only if
// its global rank among the ties is below `ties`, so the lowest indices win as on the CPU.
const MASK_COUNT = /* wgsl */ `${MASK_COMMON}
@group(0) @binding(0) var<storage, read> scores: array<u32>;
@group(0) @binding(1) var<storage, read_write> blockTies: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;
var<workgroup> count: atomic<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  if (lid == 0u) { atomicStore(&count, 0u); }
  workgroupBarrier();
  let base = wid.x * ${WG * 4}u + lid * 4u;
  var c = 0u;
  for (var j = 0u; j < 4u; j++) {
    let i = base + j;
    if (i < p.n && order_key(scores[i]) == p.t) { c += 1u; }
  }
  atomicAdd(&count, c);
  workgroupBarrier();
  if (lid == 0u) { blockTies[wid.x] = atomicLoad(&count); }
}`;

const MASK_SCAN = /* wgsl */ `${MASK_COMMON}
@group(0) @binding(0) var<storage, read_write> blockTies: array<u32>;
@group(0) @binding(1) var<uniform> p: Params;
@compute @workgroup_size(1)
fn main() {
  var s = 0u;
  for (var b = 0u; b < p.blocks; b++) {
    let c = blockTies[b];
    blockTies[b] = s;
    s += c;
  }
}`;

const MASK_WRITE = /* wgsl */ `${MASK_COMMON}
@group(0) @binding(0) var<storage, read> scores: array<u32>;
@group(0) @binding(1) var<storage, read> blockStart: array<u32>;
@group(0) @binding(2) var<storage, read_write> mask: array<u32>;
@group(0) @binding(3) var<uniform> p: Params;
var<workgroup> before: array<u32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let base = wid.x * ${WG * 4}u + lid * 4u;
  var c = 0u;
  for (var j = 0u; j < 4u; j++) {
    let i = base + j;
    if (i < p.n && order_key(scores[i]) == p.t) { c += 1u; }
  }
  before[lid] = c;
  workgroupBarrier();
  if (lid == 0u) {
    var s = 0u;
    for (var j = 0u; j < ${WG}u; j++) {
      let v = before[j];
      before[j] = s;
      s += v;
    }
  }
  workgroupBarrier();
  var rank = blockStart[wid.x] + before[lid];
  var word = 0u;
  for (var j = 0u; j < 4u; j++) {
    let i = base + j;
    if (i < p.n) {
      let key = order_key(scores[i]);
      if (key > p.t) {
        word |= 1u << (8u * j);
      } else if (key == p.t) {
        if (rank < p.ties) { word |= 1u << (8u * j); }
        rank += 1u;
      }
    }
  }
  if (base < p.n) { mask[base / 4u] = word; }
}`;

/** Result of the GPU top-k select. */
export interface GpuTopk {
  /** The k-th largest score (+Infinity for k = 0), equal to `topkThreshold` of the CPU kernels. */
  threshold: number;
  /** How many scores equal to the threshold a top-k mask keeps (lowest indices first). */
  ties: number;
  /** The threshold's u32 order key (float bits with the sign flipped so integer order = float order). */
  key: number;
}

/** WebGPU kernels on one device. Each call encodes and submits its own command buffer. */
export class GpuKernels {
  private readonly pipelines: Record<
    "accumulate" | "finalize" | "histogram" | "select" | "maskCount" | "maskScan" | "maskWrite",
    GPUComputePipeline
  >;
  /** One uniform buffer per element-wise kernel, rewritten through the queue before each submit. */
  private readonly uniforms: Record<"accumulate" | "finalize", GPUBuffer>;

  private constructor(readonly device: GPUDevice) {
    const make = (code: string) =>
      device.createComputePipeline({
        layout: "auto",
        compute: { module: device.createShaderModule({ code }), entryPoint: "main" },
      });
    this.pipelines = {
      accumulate: make(ACCUMULATE),
      finalize: make(FINALIZE),
      histogram: make(HISTOGRAM),
      select: make(SELECT),
      maskCount: make(MASK_COUNT),
      maskScan: make(MASK_SCAN),
      maskWrite: make(MASK_WRITE),
    };
    const uniform = () =>
      device.createBuffer({ size: 8, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    this.uniforms = { accumulate: uniform(), finalize: uniform() };
  }

  /** Creates the pipelines on `device`, or on a device of the default adapter. Throws if WebGPU is missing. */
  static async create(device?: GPUDevice): Promise<GpuKernels> {
    if (device === undefined) {
      const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
      if (!gpu) throw new KernelError("WebGPU is not available (navigator.gpu is missing)");
      const adapter = await gpu.requestAdapter();
      if (!adapter) throw new KernelError("WebGPU is available but no adapter was found");
      device = await adapter.requestDevice();
    }
    // Surface shader compile errors here instead of as silently wrong results later.
    device.pushErrorScope("validation");
    const kernels = new GpuKernels(device);
    const err = await device.popErrorScope();
    if (err) throw new KernelError(`WGSL kernels failed to compile: ${err.message}`);
    return kernels;
  }

  /** Copies an array into a new storage buffer (size padded to 4 bytes). */
  upload(data: Float32Array | Uint8Array | Uint32Array, usage = 0): GPUBuffer {
    const size = Math.max(4, Math.ceil(data.byteLength / 4) * 4);
    const buf = this.device.createBuffer({
      size,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | usage,
      mappedAtCreation: true,
    });
    new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    buf.unmap();
    return buf;
  }

  /** Uploads a mask (one byte per position) in the packed layout the shaders read. */
  uploadMask(mask: Uint8Array): GPUBuffer {
    return this.upload(mask);
  }

  /** Reads `bytes` bytes of a buffer back to the CPU. */
  async download(buffer: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    const staging = this.device.createBuffer({
      size,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(buffer, 0, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** `sum += w*m*values; weight += w*m` over the first n positions (w = the client's sample count). */
  accumulate(
    sum: GPUBuffer,
    weight: GPUBuffer,
    values: GPUBuffer,
    mask: GPUBuffer,
    n: number,
    w: number,
  ): void {
    checkN(n);
    if (!Number.isFinite(w) || w < 0) {
      throw new KernelError(`sample count must be a finite number >= 0, got ${w}`);
    }
    checkBuffers(n, { sum, weight, values }, { mask });
    if (n === 0) return;
    const params = new ArrayBuffer(8);
    new Uint32Array(params, 0, 1)[0] = n;
    new Float32Array(params, 4, 1)[0] = w;
    this.run("accumulate", [sum, weight, values, mask], params, n);
  }

  /** `out = sum/weight` where weight > 0, else `own`, over the first n positions. */
  finalize(sum: GPUBuffer, weight: GPUBuffer, own: GPUBuffer, out: GPUBuffer, n: number): void {
    checkN(n);
    checkBuffers(n, { sum, weight, own, out }, {});
    if (n === 0) return;
    this.run("finalize", [sum, weight, own, out], new Uint32Array([n, 0]).buffer, n);
  }

  /** The top-k threshold of the first n f32 scores in `scores` (three histogram passes on the GPU). */
  async topkThreshold(scores: GPUBuffer, n: number, k: number): Promise<GpuTopk> {
    checkN(n);
    if (!Number.isInteger(k) || k < 0) throw new KernelError(`k must be a non-negative integer, got ${k}`);
    if (k > n) throw new KernelError(`k = ${k} exceeds the number of scores n = ${n}`);
    checkBuffers(n, { scores }, {});
    if (n === 0) return { threshold: Infinity, ties: 0, key: 0 };
    const d = this.device;
    const hist = d.createBuffer({
      size: 2049 * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      mappedAtCreation: false,
    });
    const state = this.upload(new Uint32Array([0, 0, k, 0]));
    const params = d.createBuffer({ size: 8, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    d.queue.writeBuffer(params, 0, new Uint32Array([n, 0]));
    const histGroup = d.createBindGroup({
      layout: this.pipelines.histogram.getBindGroupLayout(0),
      entries: [scores, hist, state, params].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const selectGroup = d.createBindGroup({
      layout: this.pipelines.select.getBindGroupLayout(0),
      entries: [hist, state].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const groups = Math.min(1024, Math.ceil(n / (WG * 16)));
    const enc = d.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let p = 0; p < 3; p++) {
      pass.setPipeline(this.pipelines.histogram);
      pass.setBindGroup(0, histGroup);
      pass.dispatchWorkgroups(groups);
      pass.setPipeline(this.pipelines.select);
      pass.setBindGroup(0, selectGroup);
      pass.dispatchWorkgroups(1);
    }
    pass.end();
    d.queue.submit([enc.finish()]);
    const [st, flag] = await Promise.all([this.download(state, 16), this.download(hist, 2049 * 4)]);
    for (const b of [hist, state, params]) b.destroy();
    if (new Uint32Array(flag)[2048] !== 0) throw new KernelError("scores contain NaN");
    if (k === 0) return { threshold: Infinity, ties: 0, key: 0 };
    const s = new Uint32Array(st);
    const threshold = new Float32Array(new Uint32Array([keyToBits(s[0])]).buffer)[0];
    return { threshold, ties: s[2], key: s[0] };
  }

  /**
   * The top-k mask of the first n scores, computed on the GPU into `out` (bytes packed four to a word,
   * the layout of `uploadMask`; created when omitted): exactly k ones, ties to the lowest indices,
   * byte-identical to the CPU kernels' `topkMask`.
   */
  async topkMask(scores: GPUBuffer, n: number, k: number, out?: GPUBuffer): Promise<GPUBuffer> {
    const sel = await this.topkThreshold(scores, n, k);
    const words = Math.max(1, Math.ceil(n / 4));
    const mask = out ?? this.device.createBuffer({
      size: words * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    if (mask.size < words * 4) {
      throw new KernelError(`mask buffer holds ${mask.size} bytes but needs ${words * 4}`);
    }
    const d = this.device;
    const enc = d.createCommandEncoder();
    if (k === 0) {
      enc.clearBuffer(mask, 0, words * 4);
      d.queue.submit([enc.finish()]);
      return mask;
    }
    const blocks = Math.ceil(n / (WG * 4));
    if (blocks > 65535) {
      throw new KernelError(`topkMask on the GPU handles at most ${65535 * WG * 4} scores, got ${n}`);
    }
    const blockTies = d.createBuffer({ size: blocks * 4, usage: GPUBufferUsage.STORAGE });
    const params = d.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    d.queue.writeBuffer(params, 0, new Uint32Array([n, sel.key, sel.ties, blocks]));
    const group = (name: "maskCount" | "maskScan" | "maskWrite", buffers: GPUBuffer[]) =>
      d.createBindGroup({
        layout: this.pipelines[name].getBindGroupLayout(0),
        entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
      });
    const pass = enc.beginComputePass();
    pass.setPipeline(this.pipelines.maskCount);
    pass.setBindGroup(0, group("maskCount", [scores, blockTies, params]));
    pass.dispatchWorkgroups(blocks);
    pass.setPipeline(this.pipelines.maskScan);
    pass.setBindGroup(0, group("maskScan", [blockTies, params]));
    pass.dispatchWorkgroups(1);
    pass.setPipeline(this.pipelines.maskWrite);
    pass.setBindGroup(0, group("maskWrite", [scores, blockTies, mask, params]));
    pass.dispatchWorkgroups(blocks);
    pass.end();
    d.queue.submit([enc.finish()]);
    await d.queue.onSubmittedWorkDone();
    blockTies.destroy();
    params.destroy();
    return mask;
  }

  private run(name: "accumulate" | "finalize", buffers: GPUBuffer[], params: ArrayBuffer, n: number): void {
    const d = this.device;
    const uniform = this.uniforms[name];
    d.queue.writeBuffer(uniform, 0, params);
    const pipeline = this.pipelines[name];
    const group = d.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [...buffers, uniform].map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    const enc = d.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    const groups = Math.ceil(n / WG);
    // More than 65535 workgroups per dimension is not allowed: fold into a 2-D grid.
    const x = Math.min(groups, 65535);
    pass.dispatchWorkgroups(x, Math.ceil(groups / x));
    pass.end();
    d.queue.submit([enc.finish()]);
  }
}

function checkN(n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new KernelError(`n must be a non-negative integer, got ${n}`);
}

function checkBuffers(n: number, f32: Record<string, GPUBuffer>, masks: Record<string, GPUBuffer>): void {
  for (const [name, b] of Object.entries(f32)) {
    if (b.size < n * 4) throw new KernelError(`${name} buffer holds ${b.size / 4} f32 but n = ${n}`);
  }
  for (const [name, b] of Object.entries(masks)) {
    if (b.size < n) throw new KernelError(`${name} buffer holds ${b.size} mask bytes but n = ${n}`);
  }
}
