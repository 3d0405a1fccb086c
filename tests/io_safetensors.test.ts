import assert from "node:assert/strict";
import {
  decodeSafetensors,
  encodeSafetensors,
  floatToHalf,
  SafetensorsError,
  tensorToFloat32,
} from "../runtime/io/safetensors.ts";

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
