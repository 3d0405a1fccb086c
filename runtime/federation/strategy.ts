/**
 * Coordinator strategies (Flower vocabulary): `configureFit` samples clients and says what they do;
 * `aggregateFit` decodes uploads, aggregates parameter-wise in the global layout and returns each
 * client's personalized slice. FedIT, local-only and frozen base are configurations of the same path.
 */
import { deriveSeed, shuffled } from "../data/rng.ts";
import { kernels } from "../kernels/mod.ts";
import { aggregateParameterWise, type ClientUpdate } from "../perfit/aggregate.ts";
import { type AdapterLayout, extract } from "../perfit/layout.ts";
import { maskRef } from "../kernels/bits.ts";
import { type DecodedUpdate, decodeUpdate, isMaskRef, resolveMaskRef, unpackMask } from "../client/wire.ts";
import type { FitIns, FitRes, SimConfig } from "./types.ts";
import { type MethodStrategy, strategyFor } from "./strategies.ts";

/** What a coordinator strategy does each round. */
export interface Strategy {
  readonly name: string;
  /** Whether clients upload (false for local-only and frozen base). */
  readonly aggregates: boolean;
  /** Whether clients train at all (false for frozen base). */
  readonly trains: boolean;
  configureFit(round: number, clientIds: string[]): Map<string, FitIns>;
  /** Decodes and aggregates uploads; returns per client the values of its own positions, in index order. */
  aggregateFit(round: number, results: FitRes[]): Promise<Map<string, Float32Array>>;
}

/** The one strategy behind every method; the method picks sampling, search and aggregation. */
export class PersonalizedStrategy implements Strategy {
  readonly name: string;
  readonly aggregates: boolean;
  readonly trains: boolean;
  /** Each client's latest mask (global-layout bitmask) and its reference, so unchanged masks travel by it. */
  readonly masks = new Map<string, { bits: Uint32Array; ref: string }>();

  private readonly method: MethodStrategy;

  constructor(
    private readonly cfg: SimConfig,
    private readonly global: AdapterLayout,
    private readonly layouts: Map<string, AdapterLayout>,
  ) {
    this.method = strategyFor(cfg.method);
    this.name = cfg.method;
    this.aggregates = this.method.aggregates;
    this.trains = this.method.trains;
  }

  configureFit(round: number, clientIds: string[]): Map<string, FitIns> {
    const out = new Map<string, FitIns>();
    if (!this.trains) return out;
    const n = Math.max(1, Math.round(clientIds.length * this.cfg.fractionFit));
    const chosen = n >= clientIds.length
      ? clientIds
      : shuffled(clientIds, deriveSeed(this.cfg.seed, round, 0x5a)).slice(0, n);
    for (const id of clientIds.filter((c) => chosen.includes(c))) {
      const plan = this.method.configure(round, !this.masks.has(id), this.cfg.researchEvery);
      out.set(id, { round, steps: this.cfg.localSteps, ...plan });
    }
    return out;
  }

  async aggregateFit(round: number, results: FitRes[]): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    if (!this.aggregates || results.length === 0) return out;
    const k = kernels();
    const n = this.global.size;
    const updates: ClientUpdate[] = [];
    const masks: Uint8Array[] = [];
    for (const r of results) {
      const layout = this.layouts.get(r.clientId);
      if (!layout) throw new RangeError(`unknown client "${r.clientId}"`);
      if (!r.upload) throw new RangeError(`client "${r.clientId}" sent no upload`);
      const u = await this.decode(r.clientId, r.upload);
      if (u.round !== round) {
        throw new RangeError(`client "${r.clientId}" uploaded round ${u.round}, not ${round}`);
      }
      const mask = unpackMask(u.maskBits, n);
      const values = new Float32Array(n);
      k.scatter(u.values, mask, values);
      masks.push(extract(this.global, mask, layout));
      updates.push({ values, mask, samples: u.samples });
    }
    const personalized = aggregateParameterWise(updates, k);
    results.forEach((r, i) => {
      const layout = this.layouts.get(r.clientId)!;
      out.set(r.clientId, k.gather(extract(this.global, personalized[i], layout), masks[i]));
    });
    return out;
  }

  /** Decodes an upload as the coordinator does, completing a by-reference mask from the stored one. */
  private async decode(clientId: string, body: Uint8Array): Promise<DecodedUpdate> {
    const u = decodeUpdate(body, this.global.size);
    if (isMaskRef(u)) {
      const held = this.masks.get(clientId);
      // The deployed coordinator answers 409 here and the client resends; in process it cannot happen.
      if (!held || held.ref !== u.maskRef) throw new RangeError(`client "${clientId}" names an unknown mask`);
      return resolveMaskRef(u, held.bits);
    }
    this.masks.set(clientId, { bits: u.maskBits, ref: await maskRef(u.maskBits) });
    return u;
  }
}
