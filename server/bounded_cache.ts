/**
 * A string-keyed cache that never holds more than `limit` entries: past it, the oldest insertion is
 * evicted (Map iterates in insertion order). For immutable facts worth remembering, such as a client
 * record or a verified token, where a miss only costs a re-read.
 */
export class BoundedCache<V> {
  private map = new Map<string, V>();

  constructor(private readonly limit: number) {
    if (!(limit >= 1)) throw new Error("cache limit must be at least 1");
  }

  get(key: string): V | undefined {
    return this.map.get(key);
  }

  set(key: string, value: V): void {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value!);
  }

  get size(): number {
    return this.map.size;
  }
}
