/**
 * The admin's routes over one run that answer tensors or end the run: its clients' masks, its global
 * adapter, cancel and delete (server/run_admin.ts). Mounted by app.ts under /v1/runs behind the same
 * middleware as every route (errors, CORS, per-IP rate limit); each route here takes the admin token.
 */
import { Hono } from "../runtime/deps.ts";
import type { adminAuth } from "./auth.ts";
import type { Coordinator } from "./coordinator.ts";
import { idParam, intParam } from "./params.ts";
import { encodeSafetensors } from "../runtime/io/safetensors.ts";
import { globalAdapterBody } from "./run_admin.ts";

const octets = { "content-type": "application/octet-stream" };

/** The routes, relative to /v1/runs; `admin` is the admin-token middleware (auth.ts). */
export function adminRunRoutes(coord: Coordinator, admin: ReturnType<typeof adminAuth>): Hono {
  const r = new Hono();

  r.get("/:run/masks", admin, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const offset = intParam(c.req.query("offset") ?? "0", "offset");
    const limit = Math.min(256, Math.max(1, intParam(c.req.query("limit") ?? "64", "limit")));
    const { run: rec } = await coord.getRun(run);
    const masks = await coord.masks(run, offset, limit);
    const tensors: Record<string, { dtype: "U32"; shape: number[]; data: Uint32Array }> = {};
    for (const m of masks) tensors[m.client] = { dtype: "U32", shape: [m.bits.length], data: m.bits };
    const body = encodeSafetensors(tensors, {
      format: "perfit-masks/1",
      run,
      adapterSize: String(rec.config.adapterSize),
      rounds: JSON.stringify(Object.fromEntries(masks.map((m) => [m.client, m.round]))),
    });
    return c.body(body as Uint8Array<ArrayBuffer>, 200, octets);
  });

  // The aggregated adapter in the global layout with its covered positions (safetensors,
  // runtime/client/global_adapter.ts; `deno task admin adapter` writes it as a PEFT folder).
  r.get("/:run/adapter", admin, async (c) => {
    const { run, adapter } = await coord.admin.globalAdapter(idParam(c.req.param("run"), "run id"));
    const body = globalAdapterBody(run, adapter);
    return c.body(body as Uint8Array<ArrayBuffer>, 200, octets);
  });

  r.post("/:run/cancel", admin, async (c) => {
    return c.json({ run: await coord.admin.cancel(idParam(c.req.param("run"), "run id")) });
  });

  r.delete("/:run", admin, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    await coord.admin.delete(run);
    return c.json({ run, deleted: true });
  });

  return r;
}
