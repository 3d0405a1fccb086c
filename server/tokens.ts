/**
 * Credentials. Client tokens are stateless HMAC-SHA256 signatures over `{run, client, iat}` so any
 * instance holding the secret (a Deno Deploy isolate, a restarted server) verifies them without a
 * lookup; each has exactly one accepted spelling. How long a token lives (`iat` + the server's TTL)
 * and whether its client was revoked are checked by the auth middleware (auth.ts), not here, so a
 * changed TTL applies to tokens already issued. The admin token is only ever stored as its SHA-256. Every comparison of a secret is
 * constant-time (the cache of verified tokens is looked up by the whole token, so a hit needs the exact
 * genuine token already).
 */

import { BoundedCache } from "./bounded_cache.ts";

const enc = new TextEncoder();
const PREFIX = "pc1";

/** Claims carried by a client token. */
export interface ClientClaims {
  run: string;
  client: string;
  iat: number;
}

/** base64url without padding. */
export function b64url(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/**
 * Inverse of `b64url`; throws on bad characters, padding, and any non-canonical spelling. The last
 * character of a length ≡ 2 or 3 (mod 4) string carries 4 or 2 bits that encode nothing, so without
 * this check each token had several spellings that decode to the same bytes (and all verified).
 */
export function unb64url(s: string): Uint8Array {
  if (!/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) throw new Error("bad base64url");
  const b = atob(s.replaceAll("-", "+").replaceAll("_", "/") + "=".repeat((4 - (s.length % 4)) % 4));
  const out = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
  if (b64url(out) !== s) throw new Error("non-canonical base64url");
  return out;
}

/** Compares two byte strings in time independent of where they differ. */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  let diff = a.length ^ b.length;
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) diff |= (a[i % (a.length || 1)] ?? 0) ^ (b[i % (b.length || 1)] ?? 0);
  return diff === 0 && a.length === b.length;
}

/** SHA-256 of a string, hex. */
export async function sha256Hex(data: string | Uint8Array): Promise<string> {
  const bytes = typeof data === "string" ? enc.encode(data) : data;
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** A fresh random token: 32 bytes, base64url. */
export function randomToken(bytes = 32): string {
  return b64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

/** Signs and verifies client tokens with one HMAC key. */
export class TokenSigner {
  /**
   * Tokens already verified, by their exact text: a client sends the same token with every request,
   * and the HMAC (an async WebCrypto call) was a visible share of an upload's CPU. Only genuine
   * tokens enter, so a forged one is always checked in full.
   */
  private verified = new BoundedCache<ClientClaims>(50_000);

  private constructor(private readonly key: CryptoKey) {}

  /** Imports `secret` (any length ≥ 16 bytes of entropy recommended) as an HMAC-SHA256 key. */
  static async create(secret: string): Promise<TokenSigner> {
    if (secret.length < 16) throw new Error("token secret must be at least 16 characters");
    const key = await crypto.subtle.importKey(
      "raw",
      enc.encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      [
        "sign",
      ],
    );
    return new TokenSigner(key);
  }

  private async mac(body: string): Promise<Uint8Array> {
    return new Uint8Array(await crypto.subtle.sign("HMAC", this.key, enc.encode(body)));
  }

  /** `pc1.<claims>.<mac>`. */
  async sign(claims: ClientClaims): Promise<string> {
    const body = `${PREFIX}.${b64url(enc.encode(JSON.stringify(claims)))}`;
    return `${body}.${b64url(await this.mac(body))}`;
  }

  /** The claims of a genuine token, or null for anything forged, truncated or malformed. */
  async verify(token: string): Promise<ClientClaims | null> {
    if (token.length > 1024) return null;
    const hit = this.verified.get(token);
    if (hit) return hit;
    const claims = await this.verifyFully(token);
    if (claims) this.verified.set(token, claims);
    return claims;
  }

  private async verifyFully(token: string): Promise<ClientClaims | null> {
    const parts = token.split(".");
    if (parts.length !== 3 || parts[0] !== PREFIX) return null;
    let given: Uint8Array;
    try {
      given = unb64url(parts[2]);
    } catch {
      return null;
    }
    const want = await this.mac(`${parts[0]}.${parts[1]}`);
    if (!timingSafeEqual(given, want)) return null;
    try {
      const c = JSON.parse(new TextDecoder().decode(unb64url(parts[1])));
      if (typeof c?.run !== "string" || typeof c?.client !== "string" || typeof c?.iat !== "number") {
        return null;
      }
      return { run: c.run, client: c.client, iat: c.iat };
    } catch {
      return null;
    }
  }
}

/** True when `token` hashes to `hashHex` (constant-time on the hashes). */
export async function adminTokenMatches(token: string, hashHex: string): Promise<boolean> {
  const got = enc.encode(await sha256Hex(token));
  return timingSafeEqual(got, enc.encode(hashHex));
}
