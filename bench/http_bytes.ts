/**
 * Upload bytes of the deployed system, measured on the HTTP bodies that reach the coordinator: the
 * simulation (8 `FederatedClient`s + `engineTrainer` against the coordinator's Hono app, bundled tiny
 * model, lexicon-instruct, one client per category, tiers high/mid/low) runs PerFIT and FedIT at the
 * same budget. Reports the mean upload body per round and PerFIT's ratio to FedIT, and the mean slice
 * (download) body.
 *
 *   deno run -A --unstable-kv bench/http_bytes.ts [--rounds=3] [--steps=8]
 */
import { DEFAULT_SIM, type Method, runFederated, type SimResult } from "../runtime/federation/mod.ts";

const flag = (name: string, dflt: number) => {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : dflt;
};

function federate(method: Method, rounds: number, steps: number): Promise<SimResult> {
  return runFederated({
    ...DEFAULT_SIM,
    method,
    rounds,
    localSteps: steps,
    targets: ["q", "k", "v", "o", "gate", "up", "down"],
    clientTiers: ["high", "mid", "low"],
  }, {
    partition: { kind: "category", clientsPerCategory: 1 },
    backend: "node",
    batchSize: 4,
    maxLen: 48,
    maxTrain: 64,
    maxTest: 8,
  });
}

/** Mean upload body per round, how many named their mask by reference, and the mean slice body. */
function perRound(r: SimResult): { bytes: number; refs: number; n: number; down: number }[] {
  return r.rounds.map((rd) => {
    const up = rd.clients.filter((c) => c.trained);
    return {
      bytes: up.reduce((a, c) => a + c.uploadBytes, 0) / up.length,
      refs: up.filter((c) => c.maskMode === "ref").length,
      n: up.length,
      down: rd.clients.reduce((a, c) => a + c.downloadBytes, 0) / rd.clients.length,
    };
  });
}

/** The Markdown section. */
export async function run(): Promise<string> {
  const rounds = flag("rounds", 3);
  const steps = flag("steps", 8);
  const perfit = await federate("perfit", rounds, steps);
  const fedit = await federate("fedit", rounds, steps);
  const p = perRound(perfit), f = perRound(fedit);
  const lines = [
    `### Upload bytes on the HTTP bodies (bench/http_bytes.ts)`,
    ``,
    `8 clients (FederatedClient + engineTrainer through \`simulate\`) against the Hono app (KV in memory), ` +
    `bundled tiny model, r = 4 on q,k,v,o,gate,up,down (budget B = ${perfit.budget}), tiers high/mid/low ` +
    `(e = 4/2/1), ${steps} local steps per round.`,
    ``,
    `| round | PerFIT mean body | by reference | FedIT mean body | by reference | PerFIT / FedIT | PerFIT mean slice | FedIT mean slice |`,
    `|---:|---:|---:|---:|---:|---:|---:|---:|`,
  ];
  for (let i = 0; i < rounds; i++) {
    lines.push(
      `| ${i + 1} | ${p[i].bytes.toFixed(0)} B | ${p[i].refs}/${p[i].n} | ${f[i].bytes.toFixed(0)} B | ` +
        `${f[i].refs}/${f[i].n} | ${(p[i].bytes / f[i].bytes).toFixed(4)}x | ${p[i].down.toFixed(0)} B | ` +
        `${f[i].down.toFixed(0)} B |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) console.log(await run());
