/**
 * The one flag parser (runtime/cli/flags.ts) and every CLI built on it: serve, simulate, demo, results,
 * client, generate (admin's commands: tests/cli_admin.test.ts).
 * One test per parser rule; the CLIs run as real subprocesses where that is cheap (--help, bad flags).
 */
import assert from "node:assert/strict";
import { defineCli, parseFlagTable, UsageError } from "../runtime/cli/flags.ts";
import { coordinatorOf } from "../runtime/cli/common.ts";
import { serveCli } from "../server/settings.ts";
import { simulateCli } from "../examples/simulate.ts";
import { demoCli } from "../examples/demo.ts";
import { resultsCli } from "../bench/results_table.ts";
import { tuneCli } from "../bench/tune.ts";
import { clientCli } from "../examples/client.ts";
import { generateCli } from "../examples/generate.ts";

const root = new URL("..", import.meta.url).pathname;
const CLIS = {
  serve: { file: `${root}server/main.ts`, cli: serveCli },
  simulate: { file: `${root}examples/simulate.ts`, cli: simulateCli },
  demo: { file: `${root}examples/demo.ts`, cli: demoCli },
  results: { file: `${root}bench/results_table.ts`, cli: resultsCli },
  tune: { file: `${root}bench/tune.ts`, cli: tuneCli },
  client: { file: `${root}examples/client.ts`, cli: clientCli },
  generate: { file: `${root}examples/generate.ts`, cli: generateCli },
} as const;
type Name = keyof typeof CLIS;

async function run(name: Name, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-kv", CLIS[name].file, ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A usage error: exit 2, exactly one line on stderr starting with the CLI's name, no stack trace. */
function assertOneLine(name: string, r: { code: number; stderr: string; stdout: string }, re: RegExp) {
  assert.equal(r.code, 2, `exit 2 (${r.stderr})`);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line, got:\n${r.stderr}`);
  assert.ok(lines[0].startsWith(`${name}: `), lines[0]);
  assert.doesNotMatch(r.stderr, /\bat (file|ext):|Stack backtrace|error: Uncaught/);
  assert.match(lines[0], re);
}

const spec = defineCli({
  name: "t",
  flags: {
    port: { type: "int", min: 0, max: 65535, default: 8787, env: "T_PORT", help: "port" },
    clients: { type: "int", min: 1, default: 8, help: "clients" },
    lr: { type: "number", min: 0, exclusiveMin: true, default: 0.5, help: "lr" },
    backend: { type: "string", choices: ["auto", "node"], default: "auto", help: "backend" },
    targets: { type: "list", choices: ["q", "v"], default: ["q"], help: "targets" },
    quiet: { type: "boolean", help: "quiet" },
    out: { type: "string", help: "out" },
    token: {
      type: "string",
      secret: true,
      validate: (v) => (v.length >= 4 ? undefined : "≥ 4 chars"),
      help: "t",
    },
  },
}).spec;

Deno.test("cli flags: --flag value and --flag=value both work, and give the same values", () => {
  const a = parseFlagTable(spec, ["--port", "9000", "--backend", "node", "--targets", "q,v", "--lr", "0.1"]);
  const b = parseFlagTable(spec, ["--port=9000", "--backend=node", "--targets=q,v", "--lr=0.1"]);
  assert.deepEqual(a.values, b.values);
  assert.equal(a.values.port, 9000);
  assert.equal(a.values.backend, "node");
  assert.deepEqual(a.values.targets, ["q", "v"]);
  // Defaults fill the rest; booleans are false unless given, `--quiet` and `--quiet=true` set them.
  assert.equal(a.values.clients, 8);
  assert.equal(a.values.quiet, false);
  assert.equal(parseFlagTable(spec, ["--quiet"]).values.quiet, true);
  assert.equal(parseFlagTable(spec, ["--quiet=false"]).values.quiet, false);
  // A negative number is a value, not a flag; a flag is not a value.
  assert.throws(
    () => parseFlagTable(spec, ["--clients", "-3"]),
    /--clients must be an integer ≥ 1, got "-3"/,
  );
  assert.throws(
    () => parseFlagTable(spec, ["--out", "--quiet"]),
    /--out needs a value, got the flag --quiet/,
  );
  assert.throws(() => parseFlagTable(spec, ["--out"]), /--out needs a value/);
});

Deno.test("cli flags: a flag beats its env var, which beats the default; bad env values name the variable", () => {
  const env = (k: string) => (k === "T_PORT" ? "7000" : undefined);
  assert.equal(parseFlagTable(spec, [], env).values.port, 7000);
  assert.equal(parseFlagTable(spec, [], env).sources.port, "env");
  assert.equal(parseFlagTable(spec, ["--port=1"], env).values.port, 1);
  assert.equal(parseFlagTable(spec, [], () => undefined).sources.port, "default");
  assert.throws(
    () => parseFlagTable(spec, [], () => "x"),
    /T_PORT \(the environment's --port\) must be an integer/,
  );
  // An empty variable is unset, unless the flag takes "" as a value (serve's PERFIT_KV="").
  assert.equal(parseFlagTable(spec, [], () => "").values.port, 8787);
  assert.equal(serveCli.tryParse([], (k) => (k === "PERFIT_KV" ? "" : undefined)).values.kv, "");
  assert.equal(serveCli.tryParse([], () => undefined).values.kv, "./data/perfit.kv");
});

Deno.test("cli flags: bad values and unknown flags throw one line naming what is valid", () => {
  const msg = (args: string[]) => {
    try {
      parseFlagTable(spec, args);
    } catch (e) {
      assert.ok(e instanceof UsageError, String(e));
      assert.doesNotMatch(e.message, /\n/);
      return e.message;
    }
    assert.fail(`${args.join(" ")} was accepted`);
  };
  assert.match(msg(["--backend", "cuda"]), /--backend must be one of auto, node, got "cuda"/);
  assert.match(msg(["--targets", "q,x"]), /"x" is not one of q, v/);
  assert.match(msg(["--port=abc"]), /--port must be an integer in \[0, 65535\], got "abc"/);
  assert.match(msg(["--port=1.5"]), /--port must be an integer/);
  assert.match(msg(["--lr=0"]), /--lr must be a number > 0/);
  assert.match(msg(["--quiet=maybe"]), /--quiet must be true or false, got "maybe"/);
  assert.match(msg(["--bogus", "1"]), /unknown flag --bogus; valid flags: --port, --clients, .*--help/);
  assert.match(msg(["--prot", "1"]), /unknown flag --prot \(did you mean --port\?\)/);
  assert.match(msg(["stray"]), /unexpected argument "stray"/);
  assert.match(msg(["--quiet", "true"]), /--quiet takes no separate value: use --quiet=true/);
  // -3 and 0 get the same message: one rule, one wording.
  assert.equal(msg(["--clients", "-3"]).replace("-3", "X"), msg(["--clients", "0"]).replace("0", "X"));
  // Secrets are never echoed.
  const m = msg(["--token=abc"]);
  assert.match(m, /--token must be ≥ 4 chars, got 3 characters \(not shown\)/);
  assert.doesNotMatch(m, /abc/);
});

Deno.test("cli flags: simulate's --own-weight takes perfit-own's range and refuses the rest", () => {
  const parse = (v: string) =>
    simulateCli.tryParse(["--method", "perfit-own", "--own-weight", v], () => undefined);
  assert.equal(parse("5").values["own-weight"], 5);
  for (const bad of ["0.5", "1001", "abc", "NaN"]) {
    assert.throws(
      () => parse(bad),
      (e) => e instanceof UsageError && /--own-weight must be/.test(e.message),
      bad,
    );
  }
  assert.equal(simulateCli.tryParse([], () => undefined).values["own-weight"], undefined);
});

Deno.test("cli flags: --help lists every flag with its default (and env var), in-process", () => {
  for (const [name, { cli }] of Object.entries(CLIS)) {
    const text = cli.help();
    for (const [flag, s] of Object.entries(cli.spec.flags)) {
      // The flag's block: from its row to the next flag's row.
      const lines = text.split("\n");
      const i = lines.findIndex((l) => new RegExp(`^  --${flag}\\b`).test(l));
      assert.ok(i >= 0, `${name} --help lists --${flag}:\n${text}`);
      const j = lines.findIndex((l, k) => k > i && /^ {2}--/.test(l));
      const block = lines.slice(i, j < 0 ? undefined : j).join("\n");
      const m = /\(.*default: ([^;)]*)/.exec(block);
      assert.ok(m, `${name} --help lists --${flag}:\n${text}`);
      const shown = s.defaultText ??
        (s.default === undefined
          ? (s.type === "boolean" ? "false" : "none")
          : Array.isArray(s.default)
          ? s.default.join(",")
          : String(s.default));
      assert.equal(m[1], shown, `${name} --${flag} default`);
      if (s.env) assert.ok(text.includes(`env: ${s.env}`), `${name} --${flag} names ${s.env}`);
    }
  }
});

Deno.test("cli flags: every CLI prints its --help (exit 0, every flag listed) as a subprocess", async () => {
  const names = Object.keys(CLIS) as Name[];
  const results = await Promise.all(names.map((n) => run(n, ["--help"])));
  names.forEach((n, i) => {
    const r = results[i];
    assert.equal(r.code, 0, `${n} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^usage: deno task ${n}`));
    for (const flag of Object.keys(CLIS[n].cli.spec.flags)) {
      assert.ok(r.stdout.includes(`--${flag}`), `${n} --help lists --${flag}`);
    }
  });
  // simulate's list is complete: the flags of the issue, and the two run-against-a-coordinator ones.
  const sim = results[names.indexOf("simulate")].stdout;
  for (
    const f of [
      "--method",
      "--clients",
      "--rounds",
      "--partition",
      "--backend",
      "--save-adapters",
      "--server",
    ]
  ) {
    assert.ok(sim.includes(f), f);
  }
  assert.match(sim, /--admin-token T[\s\S]*ps/, "says a flag value shows in ps");
  assert.match(results[names.indexOf("serve")].stdout, /--admin-token T[\s\S]*`ps`/);
});

Deno.test("cli flags: the issue's bad flags answer one line and exit 2 in every CLI", async () => {
  const cases: [Name, string[], RegExp][] = [
    ["serve", ["--port=abc"], /--port must be an integer in \[0, 65535\], got "abc"/],
    ["serve", ["--rate-ip=fast"], /--rate-ip must be RATE or RATE\/BURST/],
    ["serve", ["--public-dashboard=maybe"], /--public-dashboard must be true or false, got "maybe"/],
    ["serve", ["--secret=short"], /--secret must be at least 16 characters, got 5 characters \(not shown\)/],
    ["serve", ["--bogus"], /unknown flag --bogus; valid flags: --port,/],
    ["simulate", ["--backend", "cuda"], /--backend must be one of auto, node, wasm, webgpu, got "cuda"/],
    ["simulate", ["--clients", "-3"], /--clients must be an integer ≥ 1, got "-3"/],
    ["simulate", ["--clients", "0"], /--clients must be an integer ≥ 1, got "0"/],
    ["simulate", ["--rounds", "0"], /--rounds must be an integer ≥ 1, got "0"/],
    ["simulate", ["--method=fedx"], /--method must be one of perfit, .*fedit/],
    [
      "simulate",
      ["--partition", "dirichlet:-1"],
      /--partition must be category, category:K or dirichlet:ALPHA/,
    ],
    ["simulate", ["--model", "/nonexistent-perfit"], /--model must be an existing directory/],
    ["simulate", ["--server", "ftp://x"], /--server must be an http:\/\/ or https:\/\/ URL/],
    ["simulate", ["--server", "http://127.0.0.1:1"], /--server needs the coordinator's admin token/],
    ["simulate", ["--admin-token", "abc"], /--admin-token is only used with --server/],
    ["demo", ["--rounds=0"], /--rounds must be an integer ≥ 1/],
    ["demo", ["--backend", "cuda"], /one of auto, node, wasm, webgpu/],
    ["results", ["--methods", "perfit,nope"], /"nope" is not one of perfit/],
    ["results", ["--seeds", "a"], /--seeds must be a comma-separated list of integers/],
    ["results", ["--partition", "bogus"], /--partition must be category, category:K or dirichlet:ALPHA/],
    ["results", ["--clients", "1"], /--clients must be an integer ≥ 2, got "1"/],
    ["tune", ["--methods", "fedit,nope"], /"nope" is not one of perfit/],
    ["tune", ["--seeds", "0,-1"], /--seeds must be a comma-separated list of integers/],
    ["tune", ["--partition", "dirichlet:0"], /--partition must be category, category:K or dirichlet:ALPHA/],
    ["tune", ["--bogus"], /unknown flag --bogus; valid flags: --methods,/],
    ["tune", ["--rounds", "0"], /--rounds must be an integer ≥ 1, got "0"/],
    ["generate", ["--category", "nope"], /--category must be one of acronyms, computing, .*, got "nope"/],
    ["generate", ["--max-new-tokens=0"], /--max-new-tokens must be an integer in \[1, 4096\], got "0"/],
    ["generate", ["--steps", "-3"], /--steps must be an integer ≥ 1, got "-3"/],
    ["generate", ["--model", "/nonexistent-perfit"], /--model must be an existing directory/],
    ["generate", ["--prompt"], /--prompt needs a value/],
    ["generate", ["--bogus"], /unknown flag --bogus; valid flags: --model, --adapter, --base, --prompt,/],
    ["generate", ["stray"], /unexpected argument "stray"/],
    ["generate", ["--model", root, "--steps", "3"], /--steps only applies when personalizing here/],
    ["generate", ["--model", root, "--adapter", root], /--model is a merged folder: give it alone/],
    [
      "generate",
      ["--min-new-tokens", "30"],
      /--min-new-tokens \(30\) must be at most --max-new-tokens \(24\)/,
    ],
  ];
  const results = await Promise.all(cases.map(([n, args]) => run(n, args, { PERFIT_ADMIN_TOKEN: "" })));
  cases.forEach(([n, args, re], i) => {
    assertOneLine(n, results[i], re);
    assert.equal(results[i].stdout, "", `${n} ${args.join(" ")} prints nothing else`);
  });
});

Deno.test("cli flags: generate takes --flag value and --flag=value alike, with every default filled", () => {
  const a = generateCli.tryParse([
    "--steps",
    "5",
    "--out",
    "x",
    "--category",
    "satire",
    "--prompt",
    "hi there",
  ]);
  const b = generateCli.tryParse(["--steps=5", "--out=x", "--category=satire", "--prompt=hi there"]);
  assert.deepEqual(a.values, b.values);
  assert.deepEqual(
    [a.values.steps, a.values.out, a.values.category, a.values.prompt, a.values["max-new-tokens"]],
    [5, "x", "satire", "hi there", 24],
  );
  assert.equal(generateCli.tryParse([]).values.model, undefined);
});

Deno.test("cli flags: --server and the admin token go together; the token comes from flag, env or file", async () => {
  const src = { "admin-token": "default", "admin-token-file": "default" } as const;
  assert.equal(coordinatorOf({}, src), undefined);
  assert.deepEqual(
    coordinatorOf({ server: "http://h:1/", "admin-token": "t" }, { ...src, "admin-token": "env" }),
    { url: "http://h:1", adminToken: "t" },
  );
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tok`, "from-file\n");
    assert.deepEqual(
      coordinatorOf({ server: "http://h:1", "admin-token-file": `${dir}/tok` }, {
        ...src,
        "admin-token-file": "flag",
      }),
      { url: "http://h:1", adminToken: "from-file" },
    );
    // A file flag beats the env var; two flags at once are refused.
    assert.equal(
      coordinatorOf({ server: "http://h:1", "admin-token": "env-t", "admin-token-file": `${dir}/tok` }, {
        "admin-token": "env",
        "admin-token-file": "flag",
      })?.adminToken,
      "from-file",
    );
    assert.throws(
      () =>
        coordinatorOf({ server: "http://h:1", "admin-token": "a", "admin-token-file": `${dir}/tok` }, {
          "admin-token": "flag",
          "admin-token-file": "flag",
        }),
      /give --admin-token or --admin-token-file, not both/,
    );
    assert.throws(
      () =>
        coordinatorOf({ server: "http://h:1", "admin-token-file": `${dir}/missing` }, {
          ...src,
          "admin-token-file": "flag",
        }),
      /--admin-token-file "[^"]*missing" cannot be read/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
