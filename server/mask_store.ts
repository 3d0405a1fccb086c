/**
 * Mask storage: each client's latest mask is one chunked blob under the round it was first uploaded
 * in, and a `lastmask` pointer names it. PerFIT masks rarely change after the search, so an
 * unchanged mask is referenced by its hash instead of rewritten, and the mask a new one replaces is
 * deleted once the replacing round closes (until then a reader may still hold the old pointer).
 */
import { conflict } from "./errors.ts";
import { deleteChunks, MissingBlobError, readChunks } from "./kv_chunks.ts";
import { K, type LastMask, type UploadRecord } from "./records.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import { type DecodedUpdate, type MaskRefUpdate, resolveMaskRef } from "../runtime/client/wire.ts";
import { bitWords, fullBits, maskRef } from "../runtime/kernels/bits.ts";
import type { RunState } from "./run_state.ts";

/** The pointer an accepted upload leaves behind. */
export function lastMaskRecord(r: UploadRecord): LastMask {
  return { round: r.maskRound, popcount: r.popcount, hash: r.maskHash };
}

/** Reads and references clients' stored masks. */
export class MaskStore {
  /** `maskRef` of the all-ones mask per size: every dense upload names it, so it is hashed once. */
  private fullMaskRefs = new Map<number, Promise<string>>();

  constructor(private readonly kv: Deno.Kv) {}

  /** The client's latest mask pointer, from this instance's cache when it has one. */
  async lastMaskOf(st: RunState, clientId: string): Promise<LastMask | null> {
    const cached = st.lastMasks.get(clientId);
    if (cached !== undefined) return cached;
    const lm = (await this.kv.get<LastMask>(K.lastMask(st.run.id, clientId))).value;
    st.lastMasks.set(clientId, lm);
    return lm;
  }

  /** The client's latest mask as KV holds it now (dense runs: all ones), or null before its first upload. */
  async maskOf(st: RunState, clientId: string): Promise<{ bits: Uint32Array; round: number } | null> {
    const n = st.run.config.adapterSize;
    if (strategyFor(st.run.config.method).denseMask) return { bits: fullBits(n), round: st.run.globalRound };
    for (let attempt = 0;; attempt++) {
      const lm = await this.kv.get<LastMask>(K.lastMask(st.run.id, clientId));
      if (!lm.value) return null;
      const bits = new Uint32Array(bitWords(n));
      try {
        await readChunks(this.kv, K.mask(st.run.id, clientId, lm.value.round), new Uint8Array(bits.buffer));
        return { bits, round: lm.value.round };
      } catch (e) {
        // The pointer moved on and a round close dropped the mask it named (see `dropReplacedMasks`).
        if (!(e instanceof MissingBlobError) || attempt >= 2) throw e;
      }
    }
  }

  fullMaskRef(n: number): Promise<string> {
    let ref = this.fullMaskRefs.get(n);
    if (!ref) this.fullMaskRefs.set(n, ref = maskRef(fullBits(n)));
    return ref;
  }

  /**
   * Completes an update sent by reference with the client's stored mask, or answers 409
   * `mask_unknown` when we hold no mask under that reference (a client whose acknowledgement we lost,
   * a pointer another instance moved on, a mask already dropped): the client resends with the mask.
   */
  async withStoredMask(
    st: RunState,
    clientId: string,
    u: MaskRefUpdate,
    last: LastMask | null,
  ): Promise<DecodedUpdate> {
    const n = st.run.config.adapterSize;
    let bits: Uint32Array | null = null;
    if (strategyFor(st.run.config.method).denseMask) {
      if (await this.fullMaskRef(n) === u.maskRef) bits = fullBits(n);
    } else if (last !== null && last.hash === u.maskRef) {
      bits = new Uint32Array(bitWords(n));
      try {
        await readChunks(this.kv, K.mask(st.run.id, clientId, last.round), new Uint8Array(bits.buffer));
      } catch (e) {
        if (!(e instanceof MissingBlobError)) throw e;
        bits = null;
      }
    }
    if (bits === null) {
      throw conflict(
        "mask_unknown",
        "the coordinator holds no mask under this maskRef for this client: resend the update with its mask",
      );
    }
    return resolveMaskRef(u, bits);
  }

  /**
   * After a round closed: deletes the masks its uploads replaced. Once the round is closed no record
   * that a reader follows names them (upload records of closed rounds keep their round number as
   * history only), so each client keeps one stored mask, not one per change.
   */
  async dropReplacedMasks(runId: string, adapterSize: number, uploads: UploadRecord[]): Promise<void> {
    const bytes = bitWords(adapterSize) * 4;
    for (const u of uploads) {
      if (u.replacesMaskRound !== undefined) {
        await deleteChunks(this.kv, K.mask(runId, u.client, u.replacesMaskRound), bytes);
      }
    }
  }
}
