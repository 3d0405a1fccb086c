/**
 * Flags several CLIs share: the coordinator URL and the admin token (by flag, env var or file), the
 * onnxruntime backend, and how a secret is read from a file.
 */
import type { FlagSource, FlagTable } from "./flags.ts";
import type { Backend } from "../graph/session.ts";
export type { Backend };
import { UsageError } from "./flags.ts";
import { parsePartition } from "../federation/partition.ts";

/** The onnxruntime backends a CLI can pick. */
export const BACKENDS = ["auto", "node", "wasm", "webgpu"] as const satisfies readonly Backend[];

/** LoRA target modules. */
export const TARGET_CHOICES = ["q", "k", "v", "o", "gate", "up", "down"] as const;

/** Checks an http(s) URL. */
export function httpUrl(v: string): string | undefined {
  try {
    const u = new URL(v);
    return u.protocol === "http:" || u.protocol === "https:" ? undefined : "an http:// or https:// URL";
  } catch {
    return "an http:// or https:// URL";
  }
}

/** `--admin-token`, its env var and `--admin-token-file` (the flag value shows in `ps`: prefer the others). */
export const ADMIN_TOKEN_FLAGS = {
  "admin-token": {
    type: "string",
    value: "T",
    secret: true,
    env: "PERFIT_ADMIN_TOKEN",
    help:
      "the coordinator's admin token (a flag value shows in `ps`: prefer PERFIT_ADMIN_TOKEN or --admin-token-file)",
  },
  "admin-token-file": {
    type: "string",
    value: "PATH",
    env: "PERFIT_ADMIN_TOKEN_FILE",
    help: "read the admin token from this file (trailing newline ignored)",
  },
} as const satisfies FlagTable;

/** A secret from its flag/env value or from a file: a flag beats an env var, two at one level conflict. */
export function secretFrom(
  name: string,
  direct: { value?: string; source: FlagSource },
  file: { value?: string; source: FlagSource },
  readFile: (path: string) => string = Deno.readTextFileSync,
): string | undefined {
  const rank = (s: FlagSource) => (s === "flag" ? 2 : s === "env" ? 1 : 0);
  if (direct.value !== undefined && file.value !== undefined && rank(direct.source) === rank(file.source)) {
    throw new UsageError(`give --${name} or --${name}-file, not both`);
  }
  const useFile = file.value !== undefined &&
    (direct.value === undefined || rank(file.source) > rank(direct.source));
  if (!useFile) return direct.value || undefined;
  let text: string;
  try {
    text = readFile(file.value!);
  } catch (e) {
    throw new UsageError(
      `--${name}-file ${JSON.stringify(file.value)} cannot be read: ${(e as Error).message}`,
    );
  }
  const v = text.replace(/\r?\n$/, "");
  if (!v) throw new UsageError(`--${name}-file ${JSON.stringify(file.value)} is empty`);
  return v;
}

/** The admin token from `ADMIN_TOKEN_FLAGS` values. */
export function adminTokenOf(
  values: { "admin-token"?: string; "admin-token-file"?: string },
  sources: { "admin-token": FlagSource; "admin-token-file": FlagSource },
  readFile?: (path: string) => string,
): string | undefined {
  return secretFrom(
    "admin-token",
    { value: values["admin-token"], source: sources["admin-token"] },
    { value: values["admin-token-file"], source: sources["admin-token-file"] },
    readFile,
  );
}

/** `--server URL` with the admin-token flags: simulate and demo run against a coordinator with them. */
export const COORDINATOR_FLAGS = {
  server: {
    type: "string",
    value: "URL",
    validate: httpUrl,
    help: "run against this coordinator (deno task serve) instead of in process",
  },
  ...ADMIN_TOKEN_FLAGS,
} as const satisfies FlagTable;

/** The coordinator to run against, or undefined: `--server` and an admin token come together. */
export function coordinatorOf(
  values: { server?: string; "admin-token"?: string; "admin-token-file"?: string },
  sources: { "admin-token": FlagSource; "admin-token-file": FlagSource },
  readFile?: (path: string) => string,
): { url: string; adminToken: string } | undefined {
  const adminToken = adminTokenOf(values, sources, readFile);
  if (values.server === undefined) {
    if (sources["admin-token"] === "flag" || sources["admin-token-file"] === "flag") {
      throw new UsageError("--admin-token is only used with --server URL");
    }
    return undefined;
  }
  if (adminToken === undefined) {
    throw new UsageError(
      "--server needs the coordinator's admin token: --admin-token-file PATH, PERFIT_ADMIN_TOKEN or --admin-token T",
    );
  }
  return { url: values.server.replace(/\/+$/, ""), adminToken };
}

/** A `--seeds` list's check: each a non-negative integer. */
export function seedsCheck(v: string[]): string | undefined {
  return v.every((x) => /^\d+$/.test(x)) ? undefined : "a comma-separated list of integers ≥ 0";
}

/** A `--partition` value's check: undefined when `parsePartition` takes it, else the valid forms. */
export function partitionCheck(v: string): string | undefined {
  try {
    parsePartition(v, 1);
    return undefined;
  } catch {
    return "category, category:K or dirichlet:ALPHA (K ≥ 1, ALPHA > 0)";
  }
}
