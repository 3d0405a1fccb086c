/** PerFIT: expand-then-prune search, parameter-wise aggregation and the upload codec (pure functions). */
export * from "./layout.ts";
export * from "./importance.ts";
export * from "./expansion.ts";
export * from "./prune.ts";
export * from "./aggregate.ts";
export * from "./upload.ts";
export * from "./reexpand.ts";
