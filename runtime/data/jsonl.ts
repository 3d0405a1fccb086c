/** JSONL instruction loaders: Dolly, Alpaca and chat (`messages`) records to `Example`s. */
import { ALPACA_TEMPLATE, type PromptTemplate, renderChat, renderInstruction } from "./template.ts";
import { DataError, type Example } from "./types.ts";
import { readText } from "../io/files.ts";

/** Record formats understood by the loader. */
export type JsonlFormat = "auto" | "dolly" | "alpaca" | "chat";

/** Options of `parseJsonl` / `loadJsonl`. */
export interface JsonlOptions {
  format?: JsonlFormat;
  template?: PromptTemplate;
  /** Name used in error messages (the file path when loading a file). */
  source?: string;
}

/** Guesses the format of one parsed record from its keys, or null if none fits. */
export function detectFormat(rec: unknown): Exclude<JsonlFormat, "auto"> | null {
  if (rec === null || typeof rec !== "object" || Array.isArray(rec)) return null;
  const r = rec as Record<string, unknown>;
  if (Array.isArray(r.messages)) return "chat";
  if ("instruction" in r && "response" in r) return "dolly";
  if ("instruction" in r && "output" in r) return "alpaca";
  return null;
}

function str(r: Record<string, unknown>, key: string, required: boolean, where: string): string {
  const v = r[key];
  if (v === undefined || v === null) {
    if (required) throw new DataError(`${where}: missing field "${key}"`);
    return "";
  }
  if (typeof v !== "string") {
    throw new DataError(`${where}: field "${key}" must be a string, got ${typeof v}`);
  }
  return v;
}

function toExample(
  rec: unknown,
  format: Exclude<JsonlFormat, "auto">,
  template: PromptTemplate,
  where: string,
): Example {
  if (rec === null || typeof rec !== "object" || Array.isArray(rec)) {
    throw new DataError(`${where}: expected a JSON object`);
  }
  const r = rec as Record<string, unknown>;
  if (format === "dolly") {
    const category = r.category === undefined ? undefined : str(r, "category", false, where);
    return {
      prompt: renderInstruction(
        template,
        str(r, "instruction", true, where),
        str(r, "context", false, where),
      ),
      response: str(r, "response", true, where),
      ...(category !== undefined ? { category } : {}),
    };
  }
  if (format === "alpaca") {
    const category = r.category === undefined ? undefined : str(r, "category", false, where);
    return {
      prompt: renderInstruction(template, str(r, "instruction", true, where), str(r, "input", false, where)),
      response: str(r, "output", true, where),
      ...(category !== undefined ? { category } : {}),
    };
  }
  if (!Array.isArray(r.messages)) throw new DataError(`${where}: "messages" must be an array`);
  const turns = r.messages.map((m, i) => {
    if (m === null || typeof m !== "object") {
      throw new DataError(`${where}: messages[${i}] must be an object`);
    }
    const mm = m as Record<string, unknown>;
    return {
      role: str(mm, "role", true, `${where}: messages[${i}]`),
      content: str(mm, "content", true, `${where}: messages[${i}]`),
    };
  });
  let last = -1;
  for (let i = turns.length - 1; i >= 0; i--) {
    if (turns[i].role === "assistant") {
      last = i;
      break;
    }
  }
  if (last < 0) throw new DataError(`${where}: chat record has no assistant turn`);
  const category = r.category === undefined ? undefined : str(r, "category", false, where);
  return {
    prompt: renderChat(template, turns.slice(0, last)),
    response: turns[last].content,
    ...(category !== undefined ? { category } : {}),
  };
}

/**
 * Parses JSONL text into examples. Blank lines are skipped; any malformed line throws a
 * `DataError` naming `source:line`. With format "auto" the first record decides and every
 * later record must match it.
 */
export function parseJsonl(text: string, opts: JsonlOptions = {}): Example[] {
  const source = opts.source ?? "<text>";
  const template = opts.template ?? ALPACA_TEMPLATE;
  let format: Exclude<JsonlFormat, "auto"> | null = opts.format && opts.format !== "auto"
    ? opts.format
    : null;
  const out: Example[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const where = `${source}:${i + 1}`;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      throw new DataError(`${where}: malformed JSON (${(e as Error).message})`);
    }
    if (format === null) {
      format = detectFormat(rec);
      if (format === null) {
        throw new DataError(`${where}: cannot detect format (expected dolly, alpaca or chat fields)`);
      }
    }
    out.push(toExample(rec, format, template, where));
  }
  return out;
}

/**
 * Loads examples from a JSONL file path, or parses `source` directly when it already looks
 * like JSONL text (starts with "{" or contains a newline).
 */
export async function loadJsonl(source: string, opts: JsonlOptions = {}): Promise<Example[]> {
  const looksLikeText = source.trimStart().startsWith("{") || source.includes("\n");
  if (looksLikeText) return parseJsonl(source, opts);
  const text = await readText(source);
  return parseJsonl(text, { ...opts, source: opts.source ?? source });
}
