import assert from "node:assert/strict";
import {
  decodeSafetensors,
  encodeSafetensors,
  floatToHalf,
  readSafetensors,
  SafetensorsError,
  type TensorOut,
  tensorToFloat32,
} from "../runtime/io/safetensors.ts";
import { type SequentialReader, streamReader } from "../runtime/io/reader.ts";
import { openFileReader } from "../runtime/io/files.ts";

Deno.test("safetensors round-trips tensors and metadata", () => {
  const a = new Float32Array([1.5, -2, 3.25, 0, 1e-8, -7]);
  const b = new BigInt64Array([1n, -5n, 9007199254740993n]);
  const bytes = encodeSafetensors(
    { a: { dtype: "F32", shape: [2, 3], data: a }, b: { dtype: "I64", shape: [3], data: b } },
    { samples: "12", round: "3" },
  );
  const d = decodeSafetensors(bytes);
  assert.deepEqual(d.metadata, { samples: "12", round: "3" });
  assert.deepEqual(d.tensors.get("a")!.shape, [2, 3]);
  assert.deepEqual(Array.from(tensorToFloat32(d.tensors.get("a")!)), Array.from(a));
  const bt = d.tensors.get("b")!;
  const bb = new BigInt64Array(bt.bytes.slice().buffer);
  assert.deepEqual(Array.from(bb), Array.from(b));
  // The data section starts 8-byte aligned, so views of it can be typed arrays.
  const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + hlen) % 8, 0);
});

Deno.test("safetensors converts f16 and bf16 to f32", () => {
  const vals = [0, 1, -2.5, 65504, 6.103515625e-5, 5.960464477539063e-8];
  const h = new Uint16Array(vals.map(floatToHalf));
  const bf = new Uint16Array(vals.map((v) => new Uint32Array(new Float32Array([v]).buffer)[0] >>> 16));
  const d = decodeSafetensors(encodeSafetensors({
    h: { dtype: "F16", shape: [vals.length], data: h },
    bf: { dtype: "BF16", shape: [vals.length], data: bf },
  }));
  assert.deepEqual(Array.from(tensorToFloat32(d.tensors.get("h")!)), vals);
  const bfOut = tensorToFloat32(d.tensors.get("bf")!);
  vals.forEach((v, i) => assert.ok(Math.abs(bfOut[i] - v) <= Math.abs(v) / 128, `bf16 ${v} -> ${bfOut[i]}`));
});

Deno.test("safetensors rejects malformed containers with clear errors", () => {
  const good = encodeSafetensors({ a: { dtype: "F32", shape: [2], data: new Float32Array(2) } });
  const enc = (header: unknown, data = 0) => {
    const j = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + j.length + data);
    new DataView(out.buffer).setBigUint64(0, BigInt(j.length), true);
    out.set(j, 8);
    return out;
  };
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(3), /shorter/],
    [good.subarray(0, 12), /exceeds/],
    [enc([1, 2]), /JSON object/],
    [enc({ a: { dtype: "F99", shape: [1], data_offsets: [0, 4] } }, 4), /unsupported dtype/],
    [enc({ a: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }, 4), /do not match shape/],
    [enc({ a: { dtype: "F32", shape: [1], data_offsets: [0, 8] } }, 4), /out of bounds/],
    [enc({ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4), /invalid shape/],
    [
      enc({
        a: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
        b: { dtype: "F32", shape: [1], data_offsets: [2, 6] },
      }, 8),
      /overlap/,
    ],
    [enc({ __metadata__: { n: 3 } }), /must be a string/],
  ];
  for (const [bytes, re] of cases) {
    assert.throws(
      () => decodeSafetensors(bytes),
      (e: unknown) => e instanceof SafetensorsError && re.test((e as Error).message),
    );
  }
  const broken = good.slice();
  broken[9] = 0xff; // corrupt the JSON
  assert.throws(() => decodeSafetensors(broken), SafetensorsError);
  assert.throws(
    () => encodeSafetensors({ a: { dtype: "F32", shape: [3], data: new Float32Array(2) } }),
    /expected 12/,
  );
});

/** `bytes` as a stream of `chunk`-byte pieces, counting the largest read asked of its reader. */
function chunked(bytes: Uint8Array, chunk: number): { reader: SequentialReader; largest: () => number } {
  let largest = 0;
  const inner = streamReader(
    new ReadableStream<Uint8Array>({
      start(c) {
        for (let p = 0; p < bytes.length; p += chunk) c.enqueue(bytes.slice(p, p + chunk));
        c.close();
      },
    }),
  );
  return {
    reader: { ...inner, read: (n) => (largest = Math.max(largest, n), inner.read(n)) },
    largest: () => largest,
  };
}

Deno.test("safetensors read in pieces: the same tensors, one tensor's bytes at a time, ends checked", async () => {
  const big = Float32Array.from({ length: 1000 }, (_, i) => Math.sin(i));
  const bytes = encodeSafetensors({
    small: { dtype: "F32", shape: [3], data: new Float32Array([1, -2, 3]) },
    big: { dtype: "F32", shape: [10, 100], data: big },
    ids: { dtype: "I64", shape: [2], data: new BigInt64Array([7n, -1n]) },
  }, { k: "v" });
  const want = decodeSafetensors(bytes);
  for (const chunk of [1, 7, 4096, bytes.length]) {
    const { reader, largest } = chunked(bytes, chunk);
    const got = new Map<string, TensorOut>();
    const meta = await readSafetensors(reader, (name, t) => got.set(name, t));
    assert.deepEqual(meta, { k: "v" });
    assert.deepEqual([...got.keys()], ["small", "big", "ids"]); // in the order of their data
    for (const [name, t] of want.tensors) {
      assert.deepEqual(got.get(name)!.shape, t.shape, name);
      assert.deepEqual(got.get(name)!.bytes, t.bytes, name);
    }
    // Never the whole file: the header, then one tensor at a time.
    const hlen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(largest(), Math.max(hlen, big.byteLength), `chunk ${chunk}`);
  }
  // A file that ends early is refused, wherever it ends.
  for (
    const [cut, re] of [[4, /shorter/], [20, /header/], [bytes.length - 3, /ends inside tensor ids/]] as const
  ) {
    await assert.rejects(
      () => readSafetensors(chunked(bytes.subarray(0, cut), 5).reader, () => {}),
      (e: unknown) => e instanceof SafetensorsError && re.test((e as Error).message),
    );
  }
  // From a file: its size bounds the header and the offsets before anything else is read.
  const dir = await Deno.makeTempDir({ prefix: "perfit_st_" });
  try {
    await Deno.writeFile(`${dir}/a.safetensors`, bytes);
    const file = (await openFileReader(`${dir}/a.safetensors`))!;
    assert.equal(file.size, bytes.length);
    const names: string[] = [];
    await readSafetensors(file, (n) => names.push(n));
    await file.close();
    assert.deepEqual(names, ["small", "big", "ids"]);
    assert.equal(await openFileReader(`${dir}/missing`), null);
    await Deno.writeFile(`${dir}/cut.safetensors`, bytes.subarray(0, bytes.length - 3));
    const cut = (await openFileReader(`${dir}/cut.safetensors`))!;
    await assert.rejects(() => readSafetensors(cut, () => {}), /out of bounds/);
    await cut.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
