/**
 * The one flag parser of every Perfit CLI (serve, simulate, demo, results, admin): `node:util`'s
 * `parseArgs` (it ships with Deno) under a typed flag table.
 *
 * Every CLI built on it
 * - takes `--flag value` and `--flag=value` (booleans: `--flag`, or `--flag=true|false|1|0`);
 * - answers a bad value or an unknown flag with ONE line on stderr that names what is valid, and exits 2;
 * - prints every flag with its default (and its environment variable, where it has one) under `--help`.
 *
 * A flag's environment variable is read when the flag is not given; an empty variable counts as unset
 * unless the flag says `emptyEnv` ("" is a value, e.g. PERFIT_KV="" = the Deno.openKv() default).
 *
 * ```ts
 * const cli = defineCli({
 *   name: "simulate",
 *   flags: {
 *     rounds: { type: "int", min: 1, default: 4, help: "federated rounds" },
 *     backend: { type: "string", choices: ["auto", "node"], default: "auto", help: "onnxruntime backend" },
 *   },
 * });
 * const { values } = cli.parse(); // exits 0 after --help, 2 on a usage error
 * values.rounds; // number
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { requireDeno } from "../deno_only.ts";

interface FlagBase<T> {
  /** One sentence for --help. */
  help: string;
  /** The value's placeholder in --help (default by type: N, X, S, A,B). */
  value?: string;
  default?: T;
  /** Shown as the default in --help instead of `default` (e.g. "generated once, kept in KV"). */
  defaultText?: string;
  /** Environment variable read when the flag is not given (the flag wins). */
  env?: string;
  /** An empty `env` variable is a value (default: it counts as unset). */
  emptyEnv?: boolean;
  /** Further check of a parsed value: returns what is expected (an error text) or undefined when fine. */
  validate?: (v: T) => string | undefined;
  /** A secret: error messages give its length, never its value. */
  secret?: boolean;
}

/** A free-form string, or one of `choices`. */
export interface StringFlag extends FlagBase<string> {
  type: "string";
  choices?: readonly string[];
}
/** An integer in [min, max]. */
export interface IntFlag extends FlagBase<number> {
  type: "int";
  min?: number;
  max?: number;
}
/** A finite number in [min, max] (or (min, max] with `exclusiveMin`). */
export interface NumberFlag extends FlagBase<number> {
  type: "number";
  min?: number;
  max?: number;
  exclusiveMin?: boolean;
}
/** `--flag` alone is true; `--flag=true|false|1|0` sets it explicitly. Default false. */
export interface BooleanFlag extends FlagBase<boolean> {
  type: "boolean";
}
/** A comma-separated list, each item one of `choices` when given. */
export interface ListFlag extends FlagBase<string[]> {
  type: "list";
  choices?: readonly string[];
}

export type FlagSpec = StringFlag | IntFlag | NumberFlag | BooleanFlag | ListFlag;
export type FlagTable = Record<string, FlagSpec>;

type ValueOf<S> = S extends { type: "int" | "number" } ? number
  : S extends { type: "boolean" } ? boolean
  : S extends { type: "list"; choices: readonly (infer C)[] } ? C[]
  : S extends { type: "list" } ? string[]
  : S extends { choices: readonly (infer C)[] } ? C
  : string;

/** Parsed values: flags with a default (and booleans) are always set, the others may be undefined. */
export type FlagValues<T extends FlagTable> = {
  -readonly [K in keyof T]: T[K] extends { default: unknown } | { type: "boolean" } ? ValueOf<T[K]>
    : ValueOf<T[K]> | undefined;
};

/** Where a value came from. */
export type FlagSource = "flag" | "env" | "default";

/** A CLI: its name (as typed after `deno task`), what it does, and its flags. */
export interface CliSpec<T extends FlagTable> {
  /** The program name used in messages (`serve: --port must be ...`). */
  name: string;
  /** The usage line (default: `deno task <name> [flags]`). */
  usage?: string;
  /** A paragraph under the usage line. */
  summary?: string;
  flags: T;
  /** Positional arguments (e.g. the admin CLI's subcommand); none are accepted unless listed. */
  positionals?: { name: string; help: string }[];
  /** Text after the flag list (examples, notes). */
  notes?: string;
}

/** A usage error: bad flag, bad value. CLIs print its message as one line and exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The result of parsing. */
export interface Parsed<T extends FlagTable> {
  values: FlagValues<T>;
  positionals: string[];
  /** Where each flag's value came from (a flag, its env var, or the default). */
  sources: Record<keyof T, FlagSource>;
}

const TRUE = new Set(["true", "1"]);
const FALSE = new Set(["false", "0"]);

const placeholder = (s: FlagSpec): string => {
  if (s.value !== undefined) return s.value;
  switch (s.type) {
    case "int":
    case "number":
      return "N";
    case "boolean":
      return "";
    case "list":
      return s.choices ? s.choices.slice(0, 2).join(",") : "A,B";
    case "string":
      return s.choices && s.choices.join("|").length <= 24 ? s.choices.join("|") : "S";
  }
};

/** What a flag accepts, for messages: "an integer ≥ 1", "one of auto, node". */
function expected(s: FlagSpec): string {
  switch (s.type) {
    case "int":
      return s.min !== undefined && s.max !== undefined
        ? `an integer in [${s.min}, ${s.max}]`
        : s.min !== undefined
        ? `an integer ≥ ${s.min}`
        : s.max !== undefined
        ? `an integer ≤ ${s.max}`
        : "an integer";
    case "number": {
      const lo = s.min === undefined ? "" : s.exclusiveMin ? `> ${s.min}` : `≥ ${s.min}`;
      const hi = s.max === undefined ? "" : `≤ ${s.max}`;
      return `a number${lo || hi ? " " + [lo, hi].filter(Boolean).join(" and ") : ""}`;
    }
    case "boolean":
      return "true or false";
    case "list":
      return s.choices ? `a comma-separated list of ${s.choices.join(", ")}` : "a comma-separated list";
    case "string":
      return s.choices ? `one of ${s.choices.join(", ")}` : "a value";
  }
}

/** Converts one raw string; throws UsageError naming `what` (the flag or its env var). */
function convert(s: FlagSpec, raw: string, what: string): unknown {
  const got = s.secret ? `${raw.length} characters (not shown)` : JSON.stringify(raw);
  const bad = (why = expected(s)) => new UsageError(`${what} must be ${why}, got ${got}`);
  let v: unknown;
  switch (s.type) {
    case "int": {
      const n = /^[+-]?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (
        !Number.isSafeInteger(n) || (s.min !== undefined && n < s.min) || (s.max !== undefined && n > s.max)
      ) {
        throw bad();
      }
      v = n;
      break;
    }
    case "number": {
      const n = raw.trim() === "" ? NaN : Number(raw);
      if (
        !Number.isFinite(n) ||
        (s.min !== undefined && (s.exclusiveMin ? n <= s.min : n < s.min)) ||
        (s.max !== undefined && n > s.max)
      ) throw bad();
      v = n;
      break;
    }
    case "boolean":
      if (TRUE.has(raw)) v = true;
      else if (FALSE.has(raw)) v = false;
      else throw bad();
      break;
    case "list": {
      const items = raw.split(",").map((x) => x.trim()).filter(Boolean);
      if (items.length === 0) throw bad();
      if (s.choices) {
        const wrong = items.find((x) => !s.choices!.includes(x));
        if (wrong !== undefined) {
          throw new UsageError(
            `${what}: ${JSON.stringify(wrong)} is not one of ${s.choices.join(", ")} (got ${got})`,
          );
        }
      }
      v = items;
      break;
    }
    case "string":
      if (s.choices && !s.choices.includes(raw)) throw bad();
      v = raw;
      break;
  }
  // deno-lint-ignore no-explicit-any
  const why = (s.validate as ((v: any) => string | undefined) | undefined)?.(v);
  if (why) throw bad(why);
  return v;
}

/** The closest flag name by edit distance (for "did you mean"), when it is close. */
function nearest(name: string, names: string[]): string | undefined {
  const dist = (a: string, b: string) => {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0][j] = j;
    for (let i = 1; i <= a.length; i++) {
      for (let j = 1; j <= b.length; j++) {
        d[i][j] = Math.min(
          d[i - 1][j] + 1,
          d[i][j - 1] + 1,
          d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
        );
      }
    }
    return d[a.length][b.length];
  };
  let best: string | undefined;
  let bestD = Infinity;
  for (const n of names) {
    const dd = dist(name, n);
    if (dd < bestD) [best, bestD] = [n, dd];
  }
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/**
 * Parses `argv` against the table. Throws `UsageError` (one line) on an unknown flag, a missing or bad
 * value, or an unexpected positional. `--help` / `-h` is reported as `help: true` and nothing else is
 * checked.
 */
export function parseFlagTable<T extends FlagTable>(
  spec: CliSpec<T>,
  argv: string[],
  env: (name: string) => string | undefined = () => undefined,
): Parsed<T> & { help: boolean } {
  const table = spec.flags;
  const names = Object.keys(table);
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const n of names) options[n] = { type: table[n].type === "boolean" ? "boolean" : "string" };
  // strict: false + tokens: the checks below are ours, so that every message is one line naming the choices.
  const { tokens } = parseArgs({ args: argv, options, strict: false, allowPositionals: true, tokens: true });
  const raw = new Map<string, string>();
  const positionals: string[] = [];
  let help = false;
  let prev: { name: string; boolean: boolean; inline: boolean } | null = null;
  const valid = () => names.map((n) => `--${n}`).join(", ");
  for (const t of tokens) {
    if (t.kind === "option-terminator") {
      prev = null;
      continue;
    }
    if (t.kind === "positional") {
      if (!spec.positionals?.length || positionals.length >= spec.positionals.length) {
        const hint = prev?.boolean && !prev.inline
          ? ` (--${prev.name} takes no separate value: use --${prev.name}=${t.value})`
          : spec.positionals?.length
          ? ` (expected at most ${spec.positionals.map((p) => p.name).join(" ")})`
          : " (every value belongs to a flag: --flag value or --flag=value)";
        throw new UsageError(`unexpected argument ${JSON.stringify(t.value)}${hint}`);
      }
      positionals.push(t.value);
      prev = null;
      continue;
    }
    const name = t.name;
    if (name === "help") {
      help = true;
      prev = null;
      continue;
    }
    const s = table[name];
    if (!s || t.rawName.startsWith("-") && !t.rawName.startsWith("--")) {
      const guess = s ? undefined : nearest(name, names);
      throw new UsageError(
        `unknown flag ${t.rawName}${
          guess ? ` (did you mean --${guess}?)` : ""
        }; valid flags: ${valid()}, --help`,
      );
    }
    if (s.type === "boolean") {
      raw.set(name, t.value ?? "true");
    } else {
      const ph = placeholder(s);
      if (t.value === undefined) {
        throw new UsageError(`--${name} needs a value (--${name} ${ph} or --${name}=${ph})`);
      }
      if (!t.inlineValue && t.value.startsWith("--")) {
        throw new UsageError(`--${name} needs a value, got the flag ${t.value} (--${name} ${ph})`);
      }
      raw.set(name, t.value);
    }
    prev = { name, boolean: s.type === "boolean", inline: t.inlineValue === true };
  }
  // deno-lint-ignore no-explicit-any
  const values: Record<string, any> = {};
  const sources = {} as Record<keyof T, FlagSource>;
  if (help) return { values: values as FlagValues<T>, positionals, sources, help };
  for (const n of names) {
    const s = table[n];
    const fromFlag = raw.get(n);
    const fromEnv = fromFlag === undefined && s.env ? env(s.env) : undefined;
    if (fromFlag !== undefined) {
      values[n] = convert(s, fromFlag, `--${n}`);
      sources[n as keyof T] = "flag";
    } else if (fromEnv !== undefined && (fromEnv !== "" || s.emptyEnv)) {
      values[n] = convert(s, fromEnv, `${s.env} (the environment's --${n})`);
      sources[n as keyof T] = "env";
    } else {
      values[n] = s.default ?? (s.type === "boolean" ? false : undefined);
      sources[n as keyof T] = "default";
    }
  }
  return { values: values as FlagValues<T>, positionals, sources, help };
}

const showDefault = (s: FlagSpec): string => {
  if (s.defaultText !== undefined) return s.defaultText;
  if (s.default === undefined) return s.type === "boolean" ? "false" : "none";
  if (Array.isArray(s.default)) return s.default.join(",");
  return String(s.default);
};

/** The --help text: usage, summary, positionals, every flag with its default and env var, notes. */
export function helpText<T extends FlagTable>(spec: CliSpec<T>): string {
  const lines = [`usage: ${spec.usage ?? `deno task ${spec.name} [flags]`}`];
  if (spec.summary) lines.push("", spec.summary);
  if (spec.positionals?.length) {
    lines.push("", "arguments:");
    const w = Math.max(...spec.positionals.map((p) => p.name.length)) + 4;
    for (const p of spec.positionals) lines.push(`  ${p.name.padEnd(w)}${p.help}`);
  }
  lines.push("", "flags:");
  const rows = Object.entries(spec.flags).map(([n, s]) => {
    const ph = placeholder(s);
    return { left: `--${n}${ph ? " " + ph : ""}`, s };
  });
  const w = Math.min(34, Math.max(...rows.map((r) => r.left.length)) + 2);
  for (const { left, s } of rows) {
    const extra = [`default: ${showDefault(s)}`];
    if ((s.type === "string" || s.type === "list") && s.choices && !left.includes(s.choices.join("|"))) {
      extra.unshift(`${s.type === "list" ? "any of" : "one of"}: ${s.choices.join(", ")}`);
    }
    if (s.env) extra.push(`env: ${s.env}`);
    const pad = left.length >= w ? `\n  ${" ".repeat(w)}` : " ".repeat(w - left.length);
    lines.push(`  ${left}${pad}${s.help}`);
    lines.push(`  ${" ".repeat(w)}(${extra.join("; ")})`);
  }
  lines.push(`  ${"--help, -h".padEnd(w)}this text`);
  if (spec.notes) lines.push("", spec.notes);
  return lines.join("\n");
}

/** A defined CLI: parse (exiting on --help and on usage errors), or parse without exiting, and its help. */
export interface Cli<T extends FlagTable> {
  readonly spec: CliSpec<T>;
  /** Parses; prints help and exits 0 on --help, prints one line and exits 2 on a usage error. */
  parse(argv?: string[], env?: (name: string) => string | undefined): Parsed<T>;
  /** Parses without exiting: throws UsageError; `help` says --help was given. */
  tryParse(argv: string[], env?: (name: string) => string | undefined): Parsed<T> & { help: boolean };
  help(): string;
  /** Prints `<name>: <message>` as one line and exits: 2 for a usage error, 1 for anything else. */
  fail(e: unknown): never;
}

const denoEnv = (name: string): string | undefined => {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: as if unset
  }
};

/** Defines a CLI from its flag table. */
export function defineCli<const T extends FlagTable>(spec: CliSpec<T>): Cli<T> {
  const cli: Cli<T> = {
    spec,
    tryParse: (argv, env = denoEnv) => parseFlagTable(spec, argv, env),
    help: () => helpText(spec),
    parse(argv, env = denoEnv) {
      const deno = requireDeno(`${spec.name} (a Perfit command-line tool)`, {
        instead: "from Node, use the library (runDataOwner is what `deno task client` runs)",
      });
      let r;
      try {
        r = parseFlagTable(spec, argv ?? deno.args, env);
      } catch (e) {
        return cli.fail(e);
      }
      if (r.help) {
        console.log(helpText(spec));
        Deno.exit(0);
      }
      return r;
    },
    fail(e: unknown): never {
      const msg = (e instanceof Error ? e.message : String(e)).replace(/\s*\n\s*/g, " ");
      console.error(`${spec.name}: ${msg}`);
      Deno.exit(e instanceof UsageError ? 2 : 1);
    },
  };
  return cli;
}

/** Checks that `path` is a directory (for --model / --data style flags). */
export function isDirectory(path: string): string | undefined {
  try {
    return Deno.statSync(path).isDirectory ? undefined : "a directory";
  } catch {
    return "an existing directory";
  }
}
