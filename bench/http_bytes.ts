/**
 * Upload bytes of the deployed system, measured on the HTTP bodies that reach the coordinator:
 * 8 `FederatedClient`s with `engineTrainer` (the bundled tiny model, lexicon-instruct, one client per
 * category, tiers high/mid/low) run PerFIT and FedIT against the real Hono app (KV in memory) at the
 * same budget. Reports the mean body per round and PerFIT's ratio to FedIT.
 *
 *   deno run -A --unstable-kv bench/http_bytes.ts [--rounds=3] [--steps=8]
 */
import { createApp } from "../server/app.ts";
import { engineTrainer, FederatedClient } from "../runtime/client/mod.ts";
import { decodeUpdate, isMaskRef } from "../runtime/client/wire.ts";
import { loadModel } from "../runtime/model/engine.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import {
  BUNDLED_DATA,
  BUNDLED_MODEL,
  loadFolder,
  partition,
  PRETRAIN_STRIDE,
} from "../runtime/federation/mod.ts";

const flag = (name: string, dflt: number) => {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : dflt;
};

const ADMIN = "bench-admin-token-0123456789";
const TIERS = ["high", "mid", "low"];

/** Mean body bytes per round of one method, and how many bodies named their mask by reference. */
async function federate(
  method: "perfit" | "fedit",
  rounds: number,
  steps: number,
): Promise<{ round: number; bytes: number; refs: number; n: number }[]> {
  const model = await loadModel(BUNDLED_MODEL);
  const examples = await loadFolder(BUNDLED_DATA, { skipEvery: PRETRAIN_STRIDE });
  const data = partition(examples, { kind: "category", clientsPerCategory: 1 }, {
    seed: 0,
    testFraction: 0.1,
    maxTrain: 64,
    maxTest: 8,
  });
  const kv = await Deno.openKv(":memory:");
  const app = createApp({
    kv,
    config: {
      adminToken: ADMIN,
      secret: "bench-secret-0123456789abcdef",
      rateLimit: { ip: { rate: 0, burst: 0 }, client: { rate: 0, burst: 0 } },
      tickMs: 0,
    },
  });
  try {
    const res = await app.request("/v1/runs", {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify({
        baseModel: "perfit-tiny",
        model: toHfConfig(model.config),
        lora: { rank: 4, alpha: 8, targets: ["q", "k", "v", "o", "gate", "up", "down"] },
        method,
        rounds,
        clientsPerRound: data.length,
        quorum: data.length,
        roundDeadlineMs: 3_600_000,
        ...(method === "perfit" ? { expansionTiers: { low: 1, mid: 2, high: 4 } } : {}),
        train: { localSteps: steps, batchSize: 4, maxLen: 48, pruneStages: 4 },
      }),
    });
    if (res.status !== 201) throw new Error(`create run: ${res.status} ${await res.text()}`);
    const run = (await res.json()).run;
    const bodies: { round: number; bytes: number; ref: boolean }[] = [];
    const route: typeof fetch = async (input, init) => {
      const out = await app.request(input as string, init);
      const m = /\/rounds\/(\d+)\/update$/.exec(String(input));
      if (m && out.status === 201) {
        const body = init!.body as Uint8Array;
        const ref = isMaskRef(decodeUpdate(body, run.config.adapterSize));
        bodies.push({ round: Number(m[1]), bytes: body.byteLength, ref });
      }
      return out;
    };
    const clients = await Promise.all(data.map((d, i) => {
      const trainer = engineTrainer({ model, tokenizer: model.tokenizer!, data: d, backend: "node" });
      return FederatedClient.create({
        serverUrl: "http://perfit.local",
        runId: run.id,
        trainer,
        tier: method === "perfit" ? TIERS[i % TIERS.length] : undefined,
        initAdapter: trainer.initAdapter,
        pollMs: 5,
        fetch: route,
      });
    }));
    await Promise.all(clients.map((c) => c.run()));
    return Array.from({ length: rounds }, (_, i) => {
      const b = bodies.filter((x) => x.round === i + 1);
      return {
        round: i + 1,
        bytes: b.reduce((a, x) => a + x.bytes, 0) / b.length,
        refs: b.filter((x) => x.ref).length,
        n: b.length,
      };
    });
  } finally {
    await app.close();
    kv.close();
  }
}

/** The Markdown section. */
export async function run(): Promise<string> {
  const rounds = flag("rounds", 3);
  const steps = flag("steps", 8);
  const perfit = await federate("perfit", rounds, steps);
  const fedit = await federate("fedit", rounds, steps);
  const lines = [
    `### Upload bytes on the HTTP bodies (bench/http_bytes.ts)`,
    ``,
    `8 clients (FederatedClient + engineTrainer, in this process) against the Hono app (KV in memory), ` +
    `bundled tiny model, r = 4 on q,k,v,o,gate,up,down (budget B = 54272), tiers high/mid/low (e = 4/2/1), ` +
    `${steps} local steps per round.`,
    ``,
    `| round | PerFIT mean body | by reference | FedIT mean body | by reference | PerFIT / FedIT |`,
    `|---:|---:|---:|---:|---:|---:|`,
  ];
  for (let i = 0; i < rounds; i++) {
    const p = perfit[i], f = fedit[i];
    lines.push(
      `| ${p.round} | ${p.bytes.toFixed(0)} B | ${p.refs}/${p.n} | ${
        f.bytes.toFixed(0)
      } B | ${f.refs}/${f.n} | ` +
        `${(p.bytes / f.bytes).toFixed(4)}x |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) console.log(await run());
