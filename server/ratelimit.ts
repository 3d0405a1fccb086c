/** Token buckets keyed by client id or IP: `rate` tokens/s refill, `burst` capacity. */
import { ApiError } from "./errors.ts";

/** Bucket parameters; rate 0 disables limiting. */
export interface RateLimit {
  rate: number;
  burst: number;
}

/** A bounded map of token buckets. */
export class TokenBuckets {
  private buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly limit: RateLimit,
    private readonly now: () => number,
    private readonly maxKeys = 100_000,
  ) {}

  /** Takes one token for `key`; returns 0 when allowed, else the seconds until a token is available. */
  take(key: string): number {
    const { rate, burst } = this.limit;
    if (rate <= 0) return 0;
    const t = this.now();
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= this.maxKeys) this.evict(t);
      b = { tokens: burst, at: t };
      this.buckets.set(key, b);
    }
    b.tokens = Math.min(burst, b.tokens + ((t - b.at) / 1000) * rate);
    b.at = t;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / rate;
  }

  /**
   * Takes `n` more tokens from `key`'s bucket whatever it holds: a debt of at most one burst that the
   * refill pays back before `take` allows anything again (no-op when limiting is off).
   */
  charge(key: string, n: number): void {
    const { rate, burst } = this.limit;
    if (rate <= 0 || !(n > 0)) return;
    const t = this.now();
    let b = this.buckets.get(key);
    if (!b) {
      if (this.buckets.size >= this.maxKeys) this.evict(t);
      b = { tokens: burst, at: t };
      this.buckets.set(key, b);
    }
    b.tokens = Math.max(-burst, Math.min(burst, b.tokens + ((t - b.at) / 1000) * rate) - n);
    b.at = t;
  }

  private evict(t: number): void {
    // Full buckets carry no state worth keeping; drop them (and, if none, the oldest).
    for (const [k, b] of this.buckets) {
      if (b.tokens + ((t - b.at) / 1000) * this.limit.rate >= this.limit.burst) this.buckets.delete(k);
    }
    if (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value!);
  }
}

/**
 * Which proxies in front of the server to believe about the client's address (`X-Forwarded-For`):
 * `false`/0 none (the socket's peer is the client: the default, since anyone can send the header);
 * a number N: the last N hops are proxies (the socket's peer and the N-1 rightmost entries of the
 * header), and the entry before them is the client; a list: the addresses of the proxies, skipped
 * from the right while they match, so the first address not in it is the client.
 */
export type TrustProxy = false | number | string[];

/** An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as its IPv4 form; everything else lower-cased. */
function normalizeIp(a: string): string {
  const s = a.trim().toLowerCase();
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  return m ? m[1] : s;
}

/** Looks like an IPv4 or IPv6 address (what a proxy writes into `X-Forwarded-For`). */
const IP_LIKE = /^[0-9a-f:.]{2,45}$/;

/**
 * The client's address for rate limiting: the socket peer `remote`, or, behind trusted proxies,
 * the address they report. A header entry in a trusted position that is not an address (a broken
 * proxy) falls back to the socket peer rather than letting its text become a bucket key.
 */
export function clientIp(remote: string, forwardedFor: string | null | undefined, trust: TrustProxy): string {
  const peer = normalizeIp(remote);
  if (trust === false || trust === 0 || !forwardedFor) return peer;
  const hops = [...forwardedFor.split(",").map(normalizeIp), peer];
  let i: number;
  if (typeof trust === "number") {
    i = Math.max(0, hops.length - 1 - trust);
  } else {
    const proxies = new Set(trust.map(normalizeIp));
    i = hops.length - 1;
    while (i > 0 && proxies.has(hops[i])) i--;
  }
  return IP_LIKE.test(hops[i]) ? hops[i] : peer;
}

/**
 * A limit check that answers 429 only after holding the request until the key's next token, at
 * most `holdMs` (0: at once). The hold costs a timer, no CPU: a client that ignores Retry-After
 * gets one answer per hold and connection, not as many as the server can write.
 */
export function heldLimit(holdMs: number): (buckets: TokenBuckets, key: string) => Promise<void> {
  return async (buckets, key) => {
    const wait = buckets.take(key);
    if (wait <= 0) return;
    const hold = Math.min(wait * 1000, holdMs);
    if (hold > 0) await new Promise((r) => setTimeout(r, hold));
    throw new ApiError(429, "rate_limited", "too many requests", {
      "retry-after": String(Math.max(1, Math.ceil(wait - hold / 1000))),
    });
  };
}
