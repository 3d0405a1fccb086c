/** The OpenAPI 3.1 description served at `/openapi.json` (hand-written; mirrors app.ts). */
import {
  DEPLOYED_METHODS,
  OWN_WEIGHT_DEFAULT,
  OWN_WEIGHT_RANGE,
  OWN_WEIGHTED,
} from "../runtime/federation/strategies.ts";

const err = { $ref: "#/components/responses/Error" };
const bin = {
  "application/octet-stream": { schema: { type: "string", contentMediaType: "application/octet-stream" } },
};
const runId = {
  name: "run",
  in: "path",
  required: true,
  schema: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
};
const clientId = {
  name: "client",
  in: "path",
  required: true,
  schema: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
};
const json = (schema: unknown) => ({ "application/json": { schema } });

/** OpenAPI document. */
export const openapi = {
  openapi: "3.1.0",
  info: {
    title: "Perfit coordinator",
    version: "0.1.0",
    description:
      "Personalized federated instruction tuning (PerFIT / FedIT / local). Tensors travel as safetensors; " +
      "see runtime/client/wire.ts for the update and slice layouts. Errors are `{error: {code, message}}`. " +
      "JSON bodies need `content-type: application/json` (415 otherwise); every body is read under a " +
      "deadline (408 body_timeout); docs/security.md has the threat model.",
  },
  components: {
    securitySchemes: {
      admin: {
        type: "http",
        scheme: "bearer",
        description: "Admin token (printed once by `deno task serve`).",
      },
      client: {
        type: "http",
        scheme: "bearer",
        description:
          "Client token returned by join (HMAC-signed). Expires `tokenExpiresAt` (401 token_expired; " +
          "refresh before then), and is refused once the admin revokes the client (401 token_revoked).",
      },
    },
    responses: {
      Error: {
        description: "Refusal",
        content: json({
          type: "object",
          required: ["error"],
          properties: {
            error: {
              type: "object",
              required: ["code", "message"],
              properties: { code: { type: "string" }, message: { type: "string" } },
            },
          },
        }),
      },
    },
    schemas: {
      RunConfig: {
        type: "object",
        required: ["baseModel", "lora", "method", "rounds", "clientsPerRound", "roundDeadlineMs"],
        properties: {
          baseModel: { type: "string", maxLength: 200 },
          lora: {
            type: "object",
            required: ["rank", "alpha", "targets"],
            properties: {
              rank: { type: "integer", minimum: 1, maximum: 1024 },
              alpha: { type: "number", exclusiveMinimum: 0 },
              targets: {
                type: "array",
                items: { enum: ["q", "k", "v", "o", "gate", "up", "down"] },
                minItems: 1,
              },
            },
          },
          method: { enum: DEPLOYED_METHODS },
          rounds: { type: "integer", minimum: 1 },
          clientsPerRound: {
            type: "integer",
            minimum: 1,
            description: "Seats per round; the round closes when all are filled.",
          },
          quorum: {
            type: "integer",
            minimum: 1,
            description: "Uploads needed to close at the deadline (default clientsPerRound).",
          },
          roundDeadlineMs: { type: "integer", minimum: 1 },
          expansionTiers: {
            type: "object",
            additionalProperties: { type: "integer", minimum: 1, maximum: 64 },
          },
          adapterSize: {
            type: "integer",
            description: "N of the global layout (rank r * max expansion). Required unless `model`.",
          },
          model: {
            type: "object",
            description: "Hugging Face config.json; N and budget are computed from it.",
          },
          budget: { type: "integer", description: "Max ones per mask (default: rank-r size, or N/max e)." },
          maxNorm: { type: "number", description: "L2 bound on uploaded values (default 1e4)." },
          maxClients: { type: "integer" },
          maxSamples: {
            type: "integer",
            minimum: 1,
            maximum: 1e9,
            description:
              "Largest self-reported `samples` an upload may claim (default 1e9; 422 too_many_samples above).",
          },
          weighting: {
            enum: ["samples", "equal"],
            description: "What an upload weighs in the aggregate and the round's metrics: its samples " +
              "(default, FedAvg) or 1 (every upload alike).",
          },
          aggregation: {
            enum: ["mean", "trimmed-mean", "median", "clipped-mean"],
            description: "How a position's holders are combined (server/robust.ts). mean (default) and " +
              "clipped-mean stream; trimmed-mean and median hold the round's uploads until it closes and " +
              "need clientsPerRound × adapterSize ≤ 67108864.",
          },
          trim: {
            type: "number",
            exclusiveMinimum: 0,
            exclusiveMaximum: 0.5,
            description: "trimmed-mean only (required): fraction of a position's weight dropped at each end.",
          },
          clipNorm: {
            type: "number",
            exclusiveMinimum: 0,
            description:
              "clipped-mean only (required, ≤ maxNorm): each upload's values are scaled to an L2 " +
              "norm of at most this before the fold.",
          },
          ownWeight: {
            type: "number",
            minimum: OWN_WEIGHT_RANGE.min,
            maximum: OWN_WEIGHT_RANGE.max,
            description:
              `${
                OWN_WEIGHTED.join(", ")
              } only (default ${OWN_WEIGHT_DEFAULT}): how many times its weight a client's own ` +
              "upload counts in its slice, against the holders' mean (server/own_weighted.ts).",
          },
          enrollment: {
            enum: ["open", "key", "invite"],
            description: "Who may join: anyone with the run id (default open; not for production runs), " +
              "a client presenting `joinKey` (key), or one holding an admin-issued invite (invite).",
          },
          joinKey: {
            type: "string",
            minLength: 16,
            maxLength: 256,
            writeOnly: true,
            description: "enrollment key only (required): the key joins must present. Stored as a salted " +
              "hash, never returned.",
          },
          seed: { type: "integer" },
          train: { type: "object", description: "Opaque hyper-parameters handed to clients." },
        },
      },
      Run: {
        type: "object",
        description: "RunRecord: id, config, createdAt, status (active, done, or cancelled by the admin, " +
          "with cancelledAt), round, globalGen, globalRound.",
      },
      Task: {
        type: "object",
        properties: {
          run: { type: "string" },
          round: { type: "integer" },
          status: { enum: ["train", "wait", "done"] },
          deadline: { type: ["integer", "null"] },
          method: { type: "string" },
          tier: { type: "string" },
          expansion: { type: "integer" },
          rank: { type: "integer" },
          budget: { type: "integer" },
          adapterSize: { type: "integer" },
          seed: { type: "integer" },
          globalRound: { type: "integer" },
          train: { type: "object" },
        },
      },
    },
  },
  paths: {
    "/health": {
      get: {
        summary: "Liveness",
        responses: { 200: { description: "ok", content: json({ type: "object" }) } },
      },
    },
    "/openapi.json": {
      get: { summary: "This document", responses: { 200: { description: "OpenAPI 3.1" } } },
    },
    "/v1/runs": {
      post: {
        summary: "Create a run",
        security: [{ admin: [] }],
        requestBody: { required: true, content: json({ $ref: "#/components/schemas/RunConfig" }) },
        responses: {
          201: {
            description: "created",
            content: json({ type: "object", properties: { run: { $ref: "#/components/schemas/Run" } } }),
          },
          400: err,
          401: err,
          408: err,
          413: err,
          415: err,
          422: err,
        },
      },
      get: {
        summary: "List runs",
        security: [{ admin: [] }],
        responses: { 200: { description: "runs" }, 401: err },
      },
    },
    "/v1/runs/{run}": {
      get: {
        summary: "Inspect a run and its open round",
        security: [{ admin: [] }, { client: [] }],
        parameters: [runId],
        responses: { 200: { description: "run" }, 401: err, 403: err, 404: err },
      },
      delete: {
        summary:
          "Delete a run and every key the coordinator keeps of it (an active run is cancelled first); " +
          "afterwards every route of the run answers 404",
        security: [{ admin: [] }],
        parameters: [runId],
        responses: { 200: { description: "{run, deleted: true}" }, 400: err, 401: err, 404: err, 503: err },
      },
    },
    "/v1/runs/{run}/cancel": {
      post: {
        summary: "Cancel an active run: its open round closes unaggregated, and joins, tasks, uploads and " +
          "invites are refused from then on (409 run_cancelled) on every instance; reads still answer",
        security: [{ admin: [] }],
        parameters: [runId],
        responses: {
          200: {
            description: "{run}: the cancelled run",
            content: json({ type: "object", properties: { run: { $ref: "#/components/schemas/Run" } } }),
          },
          400: err,
          401: err,
          404: err,
          409: { description: "run_done or run_cancelled: the run has already ended", content: err },
          503: err,
        },
      },
    },
    "/v1/runs/{run}/adapter": {
      get: {
        summary: "The global adapter (safetensors, format perfit-global/1): `values` F32 [N] in the global " +
          "layout (rank r · largest tier; 0 where nothing was aggregated) and `covered` U32 bitmask; " +
          "metadata run, round (last aggregated, 0 = none), status, method, baseModel, lora, rank, " +
          "adapterSize, coveredCount, model (the config.json the run was sized from, if any). " +
          "runtime/client/global_adapter.ts decodes it; `deno task admin adapter` writes it as a PEFT folder",
        security: [{ admin: [] }],
        parameters: [runId],
        responses: {
          200: { description: "the global adapter", content: bin },
          400: err,
          401: err,
          404: err,
          409: { description: "no_global_adapter: the run's method aggregates nothing", content: err },
        },
      },
    },
    "/v1/runs/{run}/join": {
      get: {
        summary:
          "What joining needs, for anyone with the run id: method, base model, LoRA, tiers, enrollment " +
          "mode, round deadline and the local round's size (localSteps, batchSize, maxLen); nothing secret",
        parameters: [runId],
        responses: { 200: { description: "the run's join information" }, 404: err },
      },
      post: {
        summary: "Join a run: returns a client token and the client's tier/expansion",
        parameters: [runId],
        requestBody: {
          content: json({
            type: "object",
            properties: {
              name: { type: "string" },
              tier: { type: "string" },
              key: { type: "string", description: "the run's join key (enrollment key)" },
              invite: {
                type: "string",
                description: "a single-use invite (enrollment invite); a replay of the very join that " +
                  "used it (same name and tier, within 10 minutes) gets the same client back",
              },
            },
          }),
        },
        responses: {
          201: {
            description:
              "joined: {run, clientId, token, tokenExpiresAt, tier, expansion, rank, budget, adapterSize, method}",
          },
          409: { description: "run_full, or run_cancelled: the admin cancelled the run", content: err },
          400: err,
          403: {
            description: "enrollment_required: the run's join key or an invite of this run is missing or " +
              "wrong; invite_used: the invite was used by another join",
            content: err,
          },
          404: err,
          408: err,
          415: err,
          410: err,
          422: err,
          429: err,
        },
      },
    },
    "/v1/runs/{run}/invites": {
      post: {
        summary:
          "Issue single-use invites to a run with enrollment invite (tokens answered once, stored hashed)",
        security: [{ admin: [] }],
        parameters: [runId],
        requestBody: {
          required: true,
          content: json({
            type: "object",
            properties: { count: { type: "integer", minimum: 1, maximum: 1000, default: 1 } },
          }),
        },
        responses: {
          201: { description: "{run, invites: [token, …]}" },
          401: err,
          404: err,
          409: {
            description: "enrollment_mismatch: the run does not take invites; run_cancelled",
            content: err,
          },
          410: err,
          415: err,
          422: err,
        },
      },
    },
    "/v1/runs/{run}/clients/{client}/token": {
      post: {
        summary: "A fresh token for this client: its own (with a still valid token), or issued by the admin",
        security: [{ admin: [] }, { client: [] }],
        parameters: [runId, clientId],
        responses: {
          200: { description: "{run, clientId, token, tokenExpiresAt}" },
          401: err,
          403: err,
          404: err,
        },
      },
      delete: {
        summary: "Revoke every token of this client issued until now (the admin may issue a new one)",
        security: [{ admin: [] }],
        parameters: [runId, clientId],
        responses: { 200: { description: "{run, clientId, revokedAt}" }, 401: err, 404: err },
      },
    },
    "/v1/runs/{run}/clients/{client}/task": {
      get: {
        summary: "The round task for this client",
        security: [{ client: [] }],
        parameters: [runId, clientId],
        responses: {
          200: { description: "task", content: json({ $ref: "#/components/schemas/Task" }) },
          401: err,
          403: err,
          409: { description: "run_cancelled: the admin cancelled the run", content: err },
        },
      },
    },
    "/v1/runs/{run}/clients/{client}/slice": {
      get: {
        summary: "The client's personalized adapter slice (safetensors: values, and the mask and covered " +
          "bitmasks, each as U32 or in its smallest mask code; runtime/client/wire.ts)",
        security: [{ client: [] }],
        parameters: [runId, clientId],
        responses: { 200: { description: "slice", content: bin }, 401: err, 403: err },
      },
    },
    "/v1/runs/{run}/clients/{client}/rounds/{round}/update": {
      post: {
        summary:
          "Upload an update (safetensors: values and one of `mask`, `mask_code` + metadata maskCode, or " +
          "metadata maskRef naming a mask the coordinator holds; metadata run, round, samples, metrics). " +
          "Idempotent.",
        security: [{ client: [] }],
        parameters: [runId, clientId, {
          name: "round",
          in: "path",
          required: true,
          schema: { type: "integer" },
        }],
        requestBody: { required: true, content: bin },
        responses: {
          201: { description: "accepted: {status: 'accepted', uploadId, round}" },
          200: { description: "replay of an accepted upload: {status: 'replay', uploadId, round}" },
          400: err,
          401: err,
          403: err,
          408: { description: "the body arrived too slowly (body_timeout)", content: err },
          409: {
            description: "round not open yet, round full, a different update already accepted, " +
              "mask_unknown: no mask is held under the update's maskRef (resend it with the mask), or " +
              "run_cancelled: the admin cancelled the run",
            content: err,
          },
          410: { description: "round closed (late upload)", content: err },
          413: err,
          422: {
            description: "invalid update: shapes, NaN/Inf, budget, norm_bound, bad_metrics, or " +
              "too_many_samples (samples above the run's maxSamples)",
            content: err,
          },
          429: {
            description: "rate limited, or upload_in_flight: this client already has an upload in flight",
            content: err,
          },
          503: {
            description: "commit lost a race, the commit queue is full, or server_busy: too many upload " +
              "bytes being received at once; retry (Retry-After)",
          },
        },
      },
    },
    "/v1/runs/{run}/metrics": {
      get: {
        summary: "A page of the rounds timeline with per-client metrics: a client sees its own records " +
          "and every round's aggregates, the admin everything",
        security: [{ admin: [] }, { client: [] }],
        parameters: [runId, {
          name: "offset",
          in: "query",
          description: "rounds to skip (the page starts at round offset+1)",
          schema: { type: "integer", minimum: 0 },
        }, {
          name: "limit",
          in: "query",
          description: "rounds per page (default 20, at most 100)",
          schema: { type: "integer", minimum: 1, maximum: 100 },
        }],
        responses: {
          200: {
            description: "{run, clients, rounds, offset, limit, next: offset of the next page or null}",
          },
          400: err,
          401: err,
          403: err,
        },
      },
    },
    "/v1/runs/{run}/masks": {
      get: {
        summary: "Latest mask bitmask per client (safetensors, one U32 tensor per client id), paged",
        security: [{ admin: [] }],
        parameters: [runId, { name: "offset", in: "query", schema: { type: "integer" } }, {
          name: "limit",
          in: "query",
          schema: { type: "integer", maximum: 256 },
        }],
        responses: { 200: { description: "masks", content: bin }, 401: err },
      },
    },
  },
} as const;
