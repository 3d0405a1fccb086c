/** Federations for study: partitioning, strategies, and the simulation over the deployed coordinator. */
export * from "./types.ts";
export * from "./partition.ts";
export * from "./strategies.ts";
export * from "./aggregation.ts";
export * from "./coordinator_link.ts";
export * from "./simulate.ts";
export { ProgressBar } from "./progress.ts";
export * from "./run.ts";
export * from "./setup.ts";
export * from "./knobs.ts";
