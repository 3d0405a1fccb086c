/** In-process federation: partitioning, clients, strategies and the simulation loop. */
export * from "./types.ts";
export * from "./partition.ts";
export * from "./client.ts";
export * from "./strategies.ts";
export * from "./strategy.ts";
export * from "./simulate.ts";
export { ProgressBar } from "./progress.ts";
export * from "./run.ts";
export * from "./setup.ts";
