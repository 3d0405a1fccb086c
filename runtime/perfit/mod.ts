/** PerFIT: expand-then-prune search, parameter-wise aggregation (pure functions; the upload travels in runtime/client/wire.ts). */
export * from "./layout.ts";
export * from "./importance.ts";
export * from "./expansion.ts";
export * from "./prune.ts";
export * from "./reexpand.ts";
export * from "./mix.ts";
