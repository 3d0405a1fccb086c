/** Client side of federated runs: `FederatedClient`, its storage back-ends, and the wire format. */
export {
  FederatedClient,
  FederatedClientError,
  type FederatedClientOptions,
  type StepOutcome,
  type TaskInfo,
  type Trainer,
  type TrainResult,
} from "./federated_client.ts";
export { type ClientStorage, FileStorage, IndexedDbStorage, MemoryStorage, WebStorage } from "./storage.ts";
export { decodeSlice, decodeUpdate, encodeUpdate, packMask, unpackMask, WireError } from "./wire.ts";
