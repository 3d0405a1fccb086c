/**
 * ROUGE-L against Google's rouge-score: the committed vectors (tests/reference/rouge_vectors.py wrote
 * them with rouge-score 0.1.2) always, and fresh seeded pairs scored live by rouge-score when the venv
 * of tests/reference/rouge_setup.sh exists (skipped with a message otherwise).
 */
import assert from "node:assert/strict";
import { lcsLength, meanRouge, rougeL, rougeTokens } from "../runtime/eval/rouge.ts";
import { referencePython } from "./reference/python.ts";

const here = new URL(".", import.meta.url).pathname;

interface Vector {
  reference: string;
  prediction: string;
  precision: number;
  recall: number;
  f: number;
}

function close(a: number, b: number, what: string): void {
  assert.ok(Math.abs(a - b) <= 1e-12, `${what}: ours ${a}, rouge-score ${b}`);
}

Deno.test("eval_rouge: tokens and LCS by hand", () => {
  assert.deepEqual(rougeTokens("The CAT, sat... on-the_mat! x86-64\n\tcafé"), [
    "the",
    "cat",
    "sat",
    "on",
    "the",
    "mat",
    "x86",
    "64",
    "caf",
  ]);
  assert.deepEqual(rougeTokens(" !!! "), []);
  assert.equal(lcsLength(["a", "b", "c", "d"], ["b", "d", "a"]), 2);
  assert.equal(lcsLength([], ["a"]), 0);
  const s = rougeL("the cat sat on the mat", "the cat on a mat");
  // LCS "the cat on mat" = 4; P = 4/5, R = 4/6.
  close(s.precision, 4 / 5, "precision");
  close(s.recall, 4 / 6, "recall");
  close(s.f, (2 * 0.8 * (4 / 6)) / (0.8 + 4 / 6), "f");
  assert.deepEqual(rougeL("", "x"), { precision: 0, recall: 0, f: 0 });
  assert.deepEqual(meanRouge([{ precision: 1, recall: 0, f: 0 }, { precision: 0, recall: 1, f: 0.5 }]), {
    precision: 0.5,
    recall: 0.5,
    f: 0.25,
  });
  assert.throws(() => meanRouge([]), RangeError);
  assert.throws(() => rougeTokens(3 as unknown as string), TypeError);
});

Deno.test("eval_rouge: the committed rouge-score vectors", async () => {
  const doc = JSON.parse(await Deno.readTextFile(`${here}reference/rouge_vectors.json`));
  const vectors = doc.vectors as Vector[];
  assert.ok(vectors.length >= 50, `only ${vectors.length} vectors`);
  // Not a degenerate fixture: it holds perfect, partial and zero scores.
  assert.ok(vectors.some((v) => v.f === 1) && vectors.some((v) => v.f === 0));
  assert.ok(vectors.filter((v) => v.f > 0 && v.f < 1).length >= 20);
  for (const [i, v] of vectors.entries()) {
    const s = rougeL(v.reference, v.prediction);
    close(s.precision, v.precision, `vector ${i} precision`);
    close(s.recall, v.recall, `vector ${i} recall`);
    close(s.f, v.f, `vector ${i} f`);
  }
});

const findPython = () => referencePython("PERFIT_ROUGE_PYTHON", "venv-rouge", "rouge_score");

const python = findPython();
if (!python) {
  console.warn(
    "eval_rouge: live rouge-score check SKIPPED, no Python with rouge-score (run tests/reference/rouge_setup.sh, or set PERFIT_ROUGE_PYTHON)",
  );
}

Deno.test({
  name: "eval_rouge: fresh random pairs agree with rouge-score run live",
  ignore: python === null,
  async fn() {
    // Words from a small alphabet, so pairs share many tokens and the LCS is non-trivial; punctuation,
    // case and non-ASCII letters exercise the tokenizer.
    const words = [
      "the",
      "Cat",
      "sat",
      "on",
      "a",
      "mat",
      "Über",
      "naïve",
      "x86-64",
      "(IBM)",
      "1",
      "2",
      "é",
      "",
    ];
    let s = 20250;
    const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    const text = () =>
      Array.from({ length: Math.floor(rand() * 30) }, () => words[Math.floor(rand() * words.length)])
        .join(rand() < 0.5 ? " " : ", ");
    const pairs = Array.from({ length: 300 }, () => [text(), text()]);
    const child = new Deno.Command(python!, {
      args: [`${here}reference/rouge_reference.py`],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(JSON.stringify(pairs)));
    await w.close();
    const out = await child.output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const want = JSON.parse(new TextDecoder().decode(out.stdout)) as number[][];
    assert.equal(want.length, pairs.length);
    assert.ok(want.some((x) => x[2] > 0 && x[2] < 1));
    pairs.forEach(([ref, pred], i) => {
      const got = rougeL(ref, pred);
      close(got.precision, want[i][0], `pair ${i} precision`);
      close(got.recall, want[i][1], `pair ${i} recall`);
      close(got.f, want[i][2], `pair ${i} f`);
    });
  },
});
