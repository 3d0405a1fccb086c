/**
 * The random-weight SmolLM2-135M shape of bench/model_135m.ts as a model folder (config.json,
 * model.safetensors, tokenizer), so the deployed client CLI and the browser client load it the way
 * they load any model: through `loadModel`, not a second loading path. Written once into a cache
 * folder outside git (~540 MB of f32 weights).
 *
 * The tokenizer is the bundled tiny model's (models/perfit-tiny, 2048 ids, all below the 135M
 * shape's 49152): with random weights nothing is learned anyway, and the text becomes the short
 * real token sequences a systems test needs. The weights equal `benchModel()`'s (same seed, same
 * order): its linear weights, drawn in kernel layout, are written transposed, in HF layout.
 */
import { parseConfig, toHfConfig } from "../runtime/model/config.ts";
import { expectedWeightShapes, type Weights } from "../runtime/model/weights.ts";
import { isLinearWeight } from "../runtime/model/llama.ts";
import { Rng } from "../runtime/model/rng.ts";
import { saveWeights } from "../runtime/model/tiny.ts";
import { BUNDLED_MODEL } from "../runtime/federation/run.ts";
import { SMOLLM2_135M } from "./model_135m.ts";

/** Where the folder is cached unless told otherwise. */
export const MODEL_135M_CACHE = `${Deno.env.get("HOME") ?? "/tmp"}/.cache/perfit/smollm2-135m-random`;

/** Written last: a folder without it is an interrupted write and is written again. */
const DONE = ".complete";

/** Returns the folder, writing it first when it is missing or incomplete. */
export async function ensureModel135mFolder(dir = MODEL_135M_CACHE): Promise<string> {
  try {
    await Deno.stat(`${dir}/${DONE}`);
    return dir;
  } catch { /* not there yet */ }
  await Deno.mkdir(dir, { recursive: true });
  const tiny = JSON.parse(await Deno.readTextFile(`${BUNDLED_MODEL}/config.json`));
  // The tokenizer's special ids, so the prompt template's EOS and padding mean the same here.
  const config = parseConfig({
    ...SMOLLM2_135M,
    eos_token_id: tiny.eos_token_id,
    pad_token_id: tiny.pad_token_id,
  });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(toHfConfig(config), null, 1));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(`${BUNDLED_MODEL}/${f}`, `${dir}/${f}`);
  }
  const rng = new Rng(0);
  const weights: Weights = new Map();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else rng.fillNormal(data, 0.02);
    weights.set(name, { shape: shape.slice(), data: isLinearWeight(name) ? transpose(data, shape) : data });
  }
  await saveWeights(dir, weights);
  await Deno.writeTextFile(`${dir}/${DONE}`, new Date().toISOString() + "\n");
  return dir;
}

/** `data` read as the kernel-layout [in, out] matrix of an HF [out, in] weight, written as [out, in]. */
function transpose(data: Float32Array, [out, inp]: number[]): Float32Array {
  const t = new Float32Array(data.length);
  for (let i = 0; i < inp; i++) {
    for (let o = 0; o < out; o++) t[o * inp + i] = data[i * out + o];
  }
  return t;
}
