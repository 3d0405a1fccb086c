/**
 * The parts of Perfit that run only under Deno: the coordinator (its state is in Deno KV), the
 * in-process coordinator of `simulate` and `runFederated` without a server, and the command-line tools.
 * Elsewhere (Node, a browser) they refuse with a `NeedsDenoError` that names what needs Deno and what to
 * use instead, never a ReferenceError from deep inside. Everything a data owner needs runs under Node
 * too (README, "The library").
 */

/** A Deno-only part of Perfit was called where there is no Deno (or no Deno KV). */
export class NeedsDenoError extends Error {
  override name = "NeedsDenoError";
}

/**
 * Deno's namespace, or a NeedsDenoError naming `what` (and `instead`, another way where there is one).
 * With `kv`, Deno KV is needed too, which Deno has only with `--unstable-kv`.
 */
export function requireDeno(what: string, opts: { kv?: boolean; instead?: string } = {}): typeof Deno {
  const deno = (globalThis as { Deno?: typeof Deno }).Deno;
  const instead = opts.instead ? `; ${opts.instead}` : "";
  if (deno?.version === undefined) {
    const g = globalThis as { process?: { versions?: { node?: string } } };
    const here = g.process?.versions?.node ? `Node ${g.process.versions.node}` : "this runtime";
    throw new NeedsDenoError(`${what} needs Deno (https://deno.com), not ${here}${instead}`);
  }
  if (opts.kv && typeof deno.openKv !== "function") {
    throw new NeedsDenoError(`${what} needs Deno KV: run deno with --unstable-kv${instead}`);
  }
  return deno;
}
