/** A Deno KV wrapper for the server tests that injects faults into atomic commits. */

/** What an atomic operation touched, as a fault rule sees it before it commits. */
export interface OpView {
  checks: Deno.KvKey[];
  sets: Deno.KvKey[];
  deletes: Deno.KvKey[];
}

/** The rules a test changes as it goes; every rule is off at first. */
export interface Faults {
  /** Commits for which this returns true throw instead of committing (nothing is written). */
  fail: (op: OpView) => boolean;
  /** Commits for which this returns true report success and write nothing (a lost clean-up). */
  drop: (op: OpView) => boolean;
  /** Commits for which this returns true wait until `release()`. */
  hold: (op: OpView) => boolean;
  /** Commits waiting on `hold`. */
  held: number;
  release(): void;
  /** Commits that `fail` refused so far. */
  failed: number;
}

/** The commit of a round close: the only operation that checks the run record and writes a round. */
/** A group commit: the atomic operation that writes a shard record (server/shards.ts). */
export const isGroupCommit = (op: OpView): boolean => op.sets.some((k) => k[0] === "acc" && k[3] === "shard");

export const isClose = (op: OpView): boolean =>
  op.checks.some((k) => k[0] === "run") && op.sets.some((k) => k[0] === "round");

/** `kv` with `faults` applied to every atomic operation made through it. */
export function faultyKv(kv: Deno.Kv): { kv: Deno.Kv; faults: Faults } {
  let waiters: (() => void)[] = [];
  const faults: Faults = {
    fail: () => false,
    drop: () => false,
    hold: () => false,
    held: 0,
    failed: 0,
    release() {
      faults.hold = () => false;
      for (const w of waiters) w();
      waiters = [];
    },
  };
  const wrap = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    const view: OpView = { checks: [], sets: [], deletes: [] };
    const proxy: Deno.AtomicOperation = new Proxy(op, {
      get(t, p) {
        if (p === "commit") {
          return async () => {
            if (faults.hold(view)) {
              faults.held++;
              await new Promise<void>((r) => waiters.push(r));
              faults.held--;
            }
            if (faults.fail(view)) {
              faults.failed++;
              throw new Error("injected KV failure");
            }
            if (faults.drop(view)) return { ok: true, versionstamp: "00000000000000000000" };
            return t.commit();
          };
        }
        const v = Reflect.get(t, p);
        if (typeof v !== "function") return v;
        return (...a: unknown[]) => {
          if (p === "check") { for (const c of a as Deno.AtomicCheck[]) view.checks.push(c.key); }
          if (p === "set") view.sets.push(a[0] as Deno.KvKey);
          if (p === "delete") view.deletes.push(a[0] as Deno.KvKey);
          const r = v.apply(t, a);
          return r === t ? proxy : r;
        };
      },
    });
    return proxy;
  };
  const proxy = new Proxy(kv, {
    get(t, p) {
      if (p === "atomic") return () => wrap(t.atomic());
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return { kv: proxy, faults };
}

/** Number of keys in `kv` (under `prefix`). */
export async function keyCount(kv: Deno.Kv, prefix: Deno.KvKey = []): Promise<number> {
  let n = 0;
  for await (const _ of kv.list({ prefix })) n++;
  return n;
}
