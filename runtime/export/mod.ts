/** Export of personalized adapters: PEFT adapter folders, merged models, ONNX decoders for Transformers.js. */
export {
  HF_MODULE,
  maskedAdapter,
  peftAdapterFiles,
  type PeftExportOptions,
  type PeftFiles,
  peftTensorName,
} from "./peft.ts";
export { addLowRank, baseWeightName, type F32Tensor, mergeAdapter, type WeightLayout } from "./merge.ts";
export { buildDecoderOnnx, type DecoderShape } from "./onnx_decoder.ts";
export {
  type MergedExportOptions,
  type MergedExportResult,
  TOKENIZER_FILES,
  weightsToSafetensors,
  writeMergedModel,
  writePeftAdapter,
} from "./write.ts";
export {
  type AdapterEntryLike,
  type AdapterLayoutLike,
  ExportError,
  type TargetModuleName,
} from "./types.ts";
export { parsePeftAdapter, type ReadAdapter, readPeftAdapter } from "./peft_read.ts";
