/**
 * Where the client page keeps a run between reloads: one IndexedDB database per coordinator and run
 * (`IndexedDbStorage` from runtime/client/storage.ts), holding what `FederatedClient` needs to resume
 * (its token, adapter, mask, an unacknowledged upload) and the page's own record of the file it
 * trained on (name, SHA-256, the client name its held-out split is drawn with). The file's text is
 * never stored: a reload asks for the same file again and checks it by its digest.
 */
import type { ClientStorage } from "../runtime/client/storage.ts";

/** The IndexedDB database of one run on one coordinator. */
export function runStoreName(serverUrl: string, runId: string): string {
  return `perfit-client ${serverUrl.replace(/\/+$/, "")} ${runId}`;
}

/** Storage key of the page's record (FederatedClient's keys are state.json, adapter.f32, ...). */
export const PAGE_KEY = "page.json";

/** What the page remembers of how it joined a run. */
export interface PageRecord {
  /** The client name sent at join: it also seeds the train/held-out split, so a resume reuses it. */
  name: string;
  tier?: string;
  file: { name: string; sha256: string; examples: number };
  joinedAt: number;
}

const enc = new TextEncoder();

/** Reads the page's record (null when absent or unreadable). */
export async function readPageRecord(s: ClientStorage): Promise<PageRecord | null> {
  const raw = await s.get(PAGE_KEY);
  if (!raw) return null;
  try {
    return JSON.parse(new TextDecoder().decode(raw)) as PageRecord;
  } catch {
    return null;
  }
}

/** Writes the page's record. */
export async function writePageRecord(s: ClientStorage, r: PageRecord): Promise<void> {
  await s.set(PAGE_KEY, enc.encode(JSON.stringify(r)));
}

/** Hex SHA-256 of a text (the file check on resume). */
export async function sha256Hex(text: string): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", enc.encode(text)));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Whether a resume may train on this file: the run's split and the rounds already uploaded came from
 * the recorded one, so another file is refused with what to do instead (null: go ahead).
 */
export function resumeFileProblem(saved: PageRecord | null, sha256: string, runId: string): string | null {
  if (!saved || saved.file.sha256 === sha256) return null;
  return `this browser joined run ${runId} with the file ${saved.file.name} (${saved.file.examples} examples, ` +
    `SHA-256 ${
      saved.file.sha256.slice(0, 12)
    }…), and the file picked now differs: pick that file to resume, ` +
    `or press "Forget this run" to join it afresh as a new client`;
}

/** Storage that refuses writes once the run is forgotten (a client still running cannot write it back). */
export class ForgettableStorage implements ClientStorage {
  private forgotten = false;
  constructor(private readonly inner: ClientStorage) {}
  /** From now on every call fails: the run was forgotten in this page. */
  forget(): void {
    this.forgotten = true;
  }
  private check(): void {
    if (this.forgotten) throw new Error("this run was forgotten in this browser");
  }
  get(key: string): Promise<Uint8Array | null> {
    this.check();
    return this.inner.get(key);
  }
  set(key: string, value: Uint8Array): Promise<void> {
    this.check();
    return this.inner.set(key, value);
  }
  delete(key: string): Promise<void> {
    this.check();
    return this.inner.delete(key);
  }
}

/** Whether a run's database exists (without creating it, where the browser can list databases). */
export async function storeExists(name: string): Promise<boolean> {
  if (typeof indexedDB.databases !== "function") return true; // cannot tell: opening is harmless
  return (await indexedDB.databases()).some((d) => d.name === name);
}

/**
 * Forgets a run: empties its database through a connection of its own (so it works while the page
 * still holds one), then deletes it. Resolves once emptied; the deletion itself finishes when the
 * page's other connections close (at the latest on reload).
 */
export async function forgetStore(name: string, storeName = "blobs"): Promise<void> {
  const db = await new Promise<IDBDatabase>((resolve, reject) => {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(storeName);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const tx = db.transaction(storeName, "readwrite");
      tx.objectStore(storeName).clear();
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
  await new Promise<void>((resolve) => {
    const req = indexedDB.deleteDatabase(name);
    req.onsuccess = req.onerror = req.onblocked = () => resolve();
  });
}
