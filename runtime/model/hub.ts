/**
 * Where model files come from: a local folder (Deno, Node), an http(s) base URL (browsers, edge), or a
 * Hugging Face hub id (where the network allows). One small reader serves config, weights and tokenizer.
 */
import { absPath, hasFileSystem, isDir, openFileReader, readBytesOrNull } from "../io/files.ts";
import { type SequentialReader, streamReader } from "../io/reader.ts";

/** A resolved model location. */
export interface ModelSource {
  kind: "local" | "url" | "hub";
  /** Absolute folder path, base URL without trailing slash, or hub id. */
  location: string;
}

const HUB_ID = /^[\w\-.]+\/[\w\-.]{1,96}$/;

/** Error for a model file that cannot be read; the message names the file. */
export class ModelSourceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ModelSourceError";
  }
}

/**
 * Classifies a path, URL or hub id. A string that names an existing local folder is local even when
 * it also looks like a hub id ("models/perfit-tiny"), so the bundled model never goes to the network.
 * (Browsers have no local folders: there a path is a hub id or nothing.)
 */
export async function resolveSource(pathOrId: string): Promise<ModelSource> {
  if (/^https?:\/\//.test(pathOrId)) return { kind: "url", location: pathOrId.replace(/\/+$/, "") };
  if (pathOrId.startsWith("file://")) {
    return { kind: "local", location: await absPath(decodeURIComponent(new URL(pathOrId).pathname)) };
  }
  if (hasFileSystem()) {
    const abs = await absPath(pathOrId);
    if (await isDir(abs)) return { kind: "local", location: abs };
  }
  if (HUB_ID.test(pathOrId) && !pathOrId.startsWith(".")) return { kind: "hub", location: pathOrId };
  throw new ModelSourceError(`model folder not found: ${pathOrId}`);
}

/** The URL or path of one file of a source. */
export function fileLocation(src: ModelSource, file: string): string {
  switch (src.kind) {
    case "local":
      return `${src.location}/${file}`;
    case "url":
      return `${src.location}/${file}`;
    case "hub":
      return `https://huggingface.co/${src.location}/resolve/main/${file}`;
  }
}

/** Reads one file's bytes, or null when it does not exist. Other failures throw ModelSourceError. */
export async function readOptional(src: ModelSource, file: string): Promise<Uint8Array | null> {
  const loc = fileLocation(src, file);
  if (src.kind === "local") {
    try {
      return await readBytesOrNull(loc);
    } catch (e) {
      throw new ModelSourceError(`cannot read ${loc}: ${(e as Error).message}`);
    }
  }
  const res = await fetchOptional(loc);
  return res && new Uint8Array(await res.arrayBuffer());
}

/**
 * Opens one file for reading in pieces (a large weights file, never held whole), or null when it does
 * not exist. Other failures throw ModelSourceError. The caller closes the reader.
 */
export async function openOptional(src: ModelSource, file: string): Promise<SequentialReader | null> {
  const loc = fileLocation(src, file);
  if (src.kind === "local") {
    try {
      return await openFileReader(loc);
    } catch (e) {
      throw new ModelSourceError(`cannot read ${loc}: ${(e as Error).message}`);
    }
  }
  const res = await fetchOptional(loc);
  return res && streamReader(res.body ?? new Blob([]).stream());
}

/** A successful response for `loc`, or null on 404; anything else throws ModelSourceError. */
async function fetchOptional(loc: string): Promise<Response | null> {
  let res: Response;
  try {
    res = await fetch(loc);
  } catch (e) {
    throw new ModelSourceError(`cannot fetch ${loc}: ${(e as Error).message}`);
  }
  if (res.status === 404) {
    await res.body?.cancel();
    return null;
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new ModelSourceError(`cannot fetch ${loc}: HTTP ${res.status}`);
  }
  return res;
}

/** Reads one file's bytes; a missing file throws ModelSourceError naming it. */
export async function readRequired(src: ModelSource, file: string): Promise<Uint8Array> {
  const b = await readOptional(src, file);
  if (b === null) throw new ModelSourceError(`missing model file: ${fileLocation(src, file)}`);
  return b;
}

/** Reads and parses a JSON file of a source; null when absent. */
export async function readJsonOptional(src: ModelSource, file: string): Promise<unknown | null> {
  const b = await readOptional(src, file);
  if (b === null) return null;
  try {
    return JSON.parse(new TextDecoder().decode(b));
  } catch (e) {
    throw new ModelSourceError(`${fileLocation(src, file)}: malformed JSON: ${(e as Error).message}`);
  }
}

/** Options for Transformers.js `from_pretrained`: local folders never touch the network. */
export function transformersOptions(src: ModelSource): { local_files_only: boolean } {
  return { local_files_only: src.kind === "local" };
}
