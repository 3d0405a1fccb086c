/**
 * Where a `FederatedClient` keeps what it needs to resume after a crash: small named byte blobs.
 * Deno and Node: a directory (`FileStorage`); browsers: `localStorage` (`WebStorage`) or IndexedDB
 * (`IndexedDbStorage`); tests: `MemoryStorage`. Writes replace a blob whole (file: write + rename).
 */
import { makeDir, readBytesOrNull, removeIfExists, renamePath, writeBytes } from "../io/files.ts";

/** A tiny key -> bytes store. */
export interface ClientStorage {
  get(key: string): Promise<Uint8Array | null>;
  set(key: string, value: Uint8Array): Promise<void>;
  delete(key: string): Promise<void>;
}

/** In-memory storage (survives a client object, not a process). */
export class MemoryStorage implements ClientStorage {
  readonly data = new Map<string, Uint8Array>();
  get(key: string): Promise<Uint8Array | null> {
    return Promise.resolve(this.data.get(key)?.slice() ?? null);
  }
  set(key: string, value: Uint8Array): Promise<void> {
    this.data.set(key, value.slice());
    return Promise.resolve();
  }
  delete(key: string): Promise<void> {
    this.data.delete(key);
    return Promise.resolve();
  }
}

function safeName(key: string): string {
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(key)) throw new Error(`bad storage key ${key}`);
  return key;
}

/** One file per key in `dir` (Deno, Node); atomic replace via a temp file and rename. */
export class FileStorage implements ClientStorage {
  constructor(private readonly dir: string) {}
  async get(key: string): Promise<Uint8Array | null> {
    return await readBytesOrNull(`${this.dir}/${safeName(key)}`);
  }
  async set(key: string, value: Uint8Array): Promise<void> {
    await makeDir(this.dir);
    const path = `${this.dir}/${safeName(key)}`;
    await writeBytes(`${path}.tmp`, value);
    await renamePath(`${path}.tmp`, path);
  }
  async delete(key: string): Promise<void> {
    await removeIfExists(`${this.dir}/${safeName(key)}`);
  }
}

function toB64(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromB64(s: string): Uint8Array {
  const b = atob(s);
  const out = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) out[i] = b.charCodeAt(i);
  return out;
}

/** `localStorage`-backed (browsers; base64, so only for small adapters: the quota is ~5 MB). */
export class WebStorage implements ClientStorage {
  constructor(private readonly prefix: string, private readonly store: Storage = globalThis.localStorage) {}
  get(key: string): Promise<Uint8Array | null> {
    const v = this.store.getItem(this.prefix + key);
    return Promise.resolve(v === null ? null : fromB64(v));
  }
  set(key: string, value: Uint8Array): Promise<void> {
    this.store.setItem(this.prefix + key, toB64(value));
    return Promise.resolve();
  }
  delete(key: string): Promise<void> {
    this.store.removeItem(this.prefix + key);
    return Promise.resolve();
  }
}

/** IndexedDB-backed (browsers; stores bytes as-is, so adapters of any size fit). */
export class IndexedDbStorage implements ClientStorage {
  private db: Promise<IDBDatabase>;
  constructor(name = "perfit-client", private readonly storeName = "blobs") {
    this.db = new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(storeName);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  private async op<T>(mode: IDBTransactionMode, f: (s: IDBObjectStore) => IDBRequest): Promise<T> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const req = f(db.transaction(this.storeName, mode).objectStore(this.storeName));
      req.onsuccess = () => resolve(req.result as T);
      req.onerror = () => reject(req.error);
    });
  }
  async get(key: string): Promise<Uint8Array | null> {
    const v = await this.op<ArrayBuffer | undefined>("readonly", (s) => s.get(key));
    return v ? new Uint8Array(v) : null;
  }
  async set(key: string, value: Uint8Array): Promise<void> {
    await this.op("readwrite", (s) => s.put(value.slice().buffer, key));
  }
  async delete(key: string): Promise<void> {
    await this.op("readwrite", (s) => s.delete(key));
  }
}
