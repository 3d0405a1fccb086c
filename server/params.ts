/** Path and query parameters, validated before anything reads them (400 `bad_parameter` otherwise). */
import { badRequest } from "./errors.ts";

/** A non-negative integer of at most 9 digits. */
export function intParam(s: string, name: string): number {
  if (!/^[0-9]{1,9}$/.test(s)) throw badRequest("bad_parameter", `${name} must be a non-negative integer`);
  return Number(s);
}

/** A run or client id: 1..64 URL-safe characters. */
export function idParam(s: string, name: string): string {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(s)) throw badRequest("bad_parameter", `malformed ${name}`);
  return s;
}
