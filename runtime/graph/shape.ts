/**
 * Symbolic shape algebra. A dimension is a number or a named symbol ("batch", "seq"). Derived
 * dims are integer polynomials over symbols in a canonical string form ("batch*seq", "seq-1",
 * "2*seq+2"), so reshapes, shifted slices and concatenations along symbolic axes can be checked
 * and inferred without knowing the values.
 */

/** One dimension: a static size or a symbolic expression. */
export type Dim = number | string;
/** A tensor shape. */
export type Shape = Dim[];

/** Polynomial: monomial key (sorted symbols joined by "*", "" for the constant) -> coefficient. */
type Poly = Map<string, number>;

const SYMBOL = /^[A-Za-z_][\w.]*$/;

/** True for a valid user symbol name (no operators). */
export function isSymbol(s: string): boolean {
  return SYMBOL.test(s);
}

function parse(d: Dim): Poly {
  const p: Poly = new Map();
  if (typeof d === "number") {
    if (d !== 0) p.set("", d);
    return p;
  }
  const terms = d.replace(/\s+/g, "").match(/[+-]?[^+-]+/g);
  if (!terms) throw new Error(`bad dim "${d}"`);
  for (const t of terms) {
    let coef = t.startsWith("-") ? -1 : 1;
    const syms: string[] = [];
    for (const f of t.replace(/^[+-]/, "").split("*")) {
      if (/^\d+$/.test(f)) coef *= Number(f);
      else if (SYMBOL.test(f)) syms.push(f);
      else throw new Error(`bad dim "${d}"`);
    }
    const k = syms.sort().join("*");
    p.set(k, (p.get(k) ?? 0) + coef);
  }
  return p;
}

function format(p: Poly): Dim {
  const keys = [...p.keys()].filter((k) => p.get(k) !== 0).sort((a, b) =>
    a === "" ? 1 : b === "" ? -1 : b.split("*").length - a.split("*").length || (a < b ? -1 : a > b ? 1 : 0)
  );
  if (keys.length === 0) return 0;
  if (keys.length === 1 && keys[0] === "") return p.get("")!;
  let s = "";
  for (const k of keys) {
    const c = p.get(k)!;
    const mag = Math.abs(c);
    const body = k === "" ? String(mag) : mag === 1 ? k : `${mag}*${k}`;
    s += c < 0 ? `-${body}` : s ? `+${body}` : body;
  }
  return s;
}

/** Canonical form of a dim, so equal expressions compare equal. */
export function canonDim(d: Dim): Dim {
  return typeof d === "number" ? d : format(parse(d));
}

/** True when two dims are provably equal. */
export function dimEq(a: Dim, b: Dim): boolean {
  return canonDim(a) === canonDim(b);
}

/** a + b */
export function addDim(a: Dim, b: Dim): Dim {
  const p = parse(a);
  for (const [k, c] of parse(b)) p.set(k, (p.get(k) ?? 0) + c);
  return format(p);
}

/** a - b */
export function subDim(a: Dim, b: Dim): Dim {
  const p = parse(a);
  for (const [k, c] of parse(b)) p.set(k, (p.get(k) ?? 0) - c);
  return format(p);
}

const mulKey = (a: string, b: string) =>
  [...(a ? a.split("*") : []), ...(b ? b.split("*") : [])].sort().join("*");

/** a * b */
export function mulDim(a: Dim, b: Dim): Dim {
  const p: Poly = new Map();
  for (const [ka, ca] of parse(a)) {
    for (const [kb, cb] of parse(b)) {
      const k = mulKey(ka, kb);
      p.set(k, (p.get(k) ?? 0) + ca * cb);
    }
  }
  return format(p);
}

/** Exact quotient a/b; b must be a monomial dividing every term, or equal to a. Throws otherwise. */
export function divDim(a: Dim, b: Dim): Dim {
  if (dimEq(a, b) && canonDim(b) !== 0) return 1;
  const pb = parse(b);
  const fail = () => new Error(`cannot divide dim ${a} by ${b}`);
  if (pb.size !== 1) throw fail();
  const [[kb, cb]] = [...pb];
  const bs = kb ? kb.split("*") : [];
  const out: Poly = new Map();
  for (const [ka, ca] of parse(a)) {
    const syms = ka ? ka.split("*") : [];
    for (const s of bs) {
      const i = syms.indexOf(s);
      if (i < 0) throw fail();
      syms.splice(i, 1);
    }
    if (ca % cb !== 0) throw fail();
    out.set(syms.join("*"), ca / cb);
  }
  return format(out);
}

/** Terms of a canonical dim: [coefficient, symbols] pairs (for building runtime size subgraphs). */
export function dimTerms(d: Dim): [number, string[]][] {
  return [...parse(d)].map(([k, c]) => [c, k ? k.split("*") : []]);
}

/** Number of elements of a shape (symbolic when the shape is). */
export function numel(shape: readonly Dim[]): Dim {
  return shape.reduce<Dim>((acc, d) => mulDim(acc, d), 1);
}

/** Numpy-style broadcast of two shapes; throws on incompatible dims. */
export function broadcastShapes(a: readonly Dim[], b: readonly Dim[]): Shape {
  const n = Math.max(a.length, b.length);
  const out: Shape = [];
  for (let i = 0; i < n; i++) {
    const da = i < n - a.length ? 1 : a[i - (n - a.length)];
    const db = i < n - b.length ? 1 : b[i - (n - b.length)];
    if (dimEq(da, db)) out.push(canonDim(da));
    else if (da === 1) out.push(canonDim(db));
    else if (db === 1) out.push(canonDim(da));
    else throw new Error(`cannot broadcast shapes ${fmtShape(a)} and ${fmtShape(b)}`);
  }
  return out;
}

/** Normalize a possibly negative axis against a rank. */
export function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new Error(`axis ${axis} out of range for rank ${rank}`);
  return a;
}

/** Shape equality (dims compared canonically). */
export function shapeEq(a: readonly Dim[], b: readonly Dim[]): boolean {
  return a.length === b.length && a.every((d, i) => dimEq(d, b[i]));
}

/** Human-readable shape. */
export function fmtShape(s: readonly Dim[]): string {
  return `[${s.join(", ")}]`;
}
