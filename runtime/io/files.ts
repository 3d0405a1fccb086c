/**
 * The library's file system, one code path for Deno and Node: `node:fs/promises` and `node:path`, which
 * both provide (Deno applies its permissions to them). They are imported on first use, by a specifier
 * held in a variable, so that no browser bundler tries to resolve them (a browser never reaches these
 * functions: `hasFileSystem` is false there, and a call says so). Reads return plain `Uint8Array`s (not
 * Node `Buffer`s, whose `slice` is a view), starting at offset 0 of their own buffer.
 */
import { checkCount, type SequentialReader } from "./reader.ts";

type Fs = typeof import("node:fs/promises");
type Path = typeof import("node:path");

/** True where the library has a file system (Deno, Node, Bun); false in browsers and workers. */
export function hasFileSystem(): boolean {
  const g = globalThis as { Deno?: { version?: unknown }; process?: { versions?: { node?: unknown } } };
  return g.Deno?.version !== undefined || typeof g.process?.versions?.node === "string";
}

const FS = "node:fs/promises", PATH = "node:path";
let fsModule: Promise<Fs> | undefined;
let pathModule: Promise<Path> | undefined;

function builtin<T>(spec: string): Promise<T> {
  if (!hasFileSystem()) {
    return Promise.reject(
      new Error("no file system here (a browser?): pass a URL, bytes or text instead of a path"),
    );
  }
  return import(spec) as Promise<T>;
}
const fs = (): Promise<Fs> => (fsModule ??= builtin<Fs>(FS));
const nodePath = (): Promise<Path> => (pathModule ??= builtin<Path>(PATH));

/** A missing file or folder (ENOENT), as both runtimes' node:fs report it. */
export function isNotFound(e: unknown): boolean {
  return (e as { code?: unknown } | null)?.code === "ENOENT";
}

/** The bytes of a file (path or file: URL). */
export async function readBytes(path: string | URL): Promise<Uint8Array> {
  const b = await (await fs()).readFile(path);
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength
    ? new Uint8Array(b.buffer, 0, b.byteLength)
    : new Uint8Array(b);
}

/** The bytes of a file, or null when it does not exist (other failures throw). */
export async function readBytesOrNull(path: string | URL): Promise<Uint8Array | null> {
  try {
    return await readBytes(path);
  } catch (e) {
    if (isNotFound(e)) return null;
    throw e;
  }
}

/**
 * A file opened for reading front to back in pieces (see `SequentialReader`), or null when it does not
 * exist. The caller closes it.
 */
export async function openFileReader(path: string): Promise<SequentialReader | null> {
  let fh: Awaited<ReturnType<Fs["open"]>>;
  try {
    fh = await (await fs()).open(path, "r");
  } catch (e) {
    if (isNotFound(e)) return null;
    throw e;
  }
  let size: number;
  try {
    size = (await fh.stat()).size;
  } catch (e) {
    await fh.close();
    throw e;
  }
  let pos = 0;
  return {
    size,
    async read(n: number): Promise<Uint8Array> {
      checkCount(n);
      const out = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await fh.read(out, got, n - got, pos);
        if (bytesRead === 0) break;
        got += bytesRead;
        pos += bytesRead;
      }
      return got === n ? out : out.slice(0, got);
    },
    close: () => fh.close(),
  };
}

/** A UTF-8 text file. */
export async function readText(path: string | URL): Promise<string> {
  return await (await fs()).readFile(path, "utf8");
}

/** Writes (replaces) a file. */
export async function writeBytes(path: string, data: Uint8Array): Promise<void> {
  await (await fs()).writeFile(path, data);
}

/** Writes (replaces) a UTF-8 text file. */
export async function writeText(path: string, text: string): Promise<void> {
  await (await fs()).writeFile(path, text, "utf8");
}

/** Creates a folder and its parents (no error when it exists). */
export async function makeDir(path: string): Promise<void> {
  await (await fs()).mkdir(path, { recursive: true });
}

/** Renames (atomically replaces) `from` to `to`. */
export async function renamePath(from: string, to: string): Promise<void> {
  await (await fs()).rename(from, to);
}

/** Removes a file; nothing when it does not exist. */
export async function removeIfExists(path: string): Promise<void> {
  try {
    await (await fs()).unlink(path);
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
}

/** Copies a file; false (and nothing copied) when `from` does not exist. */
export async function copyIfExists(from: string, to: string): Promise<boolean> {
  try {
    await (await fs()).copyFile(from, to);
    return true;
  } catch (e) {
    if (isNotFound(e)) return false;
    throw e;
  }
}

/** Names of the regular files in a folder (unsorted). */
export async function fileNames(dir: string): Promise<string[]> {
  const entries = await (await fs()).readdir(dir, { withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => e.name);
}

/** True when `path` is an existing folder. */
export async function isDir(path: string): Promise<boolean> {
  try {
    return (await (await fs()).stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** `path` made absolute against the working directory, normalized, without a trailing slash. */
export async function absPath(path: string): Promise<string> {
  return (await nodePath()).resolve(path);
}
