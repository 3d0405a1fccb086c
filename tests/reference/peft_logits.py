"""Logits of a base model with a PEFT LoRA adapter, for tests/export_peft_reference.test.ts.

usage: peft_logits.py BASE_DIR ADAPTER_DIR INPUT_JSON OUT_F32
INPUT_JSON: {"input_ids": [[...]], "attention_mask": [[...]]}; OUT_F32: raw little-endian float32
logits [batch, seq, vocab]. Loads everything from local folders only (no hub access).
"""
import json
import sys

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main() -> None:
    base_dir, adapter_dir, input_json, out_path = sys.argv[1:5]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, local_files_only=True)
    model = PeftModel.from_pretrained(model, adapter_dir, local_files_only=True)
    model.eval()
    with open(input_json) as f:
        inp = json.load(f)
    ids = torch.tensor(inp["input_ids"], dtype=torch.long)
    mask = torch.tensor(inp["attention_mask"], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    np.ascontiguousarray(logits.numpy().astype("<f4")).tofile(out_path)
    print(json.dumps({"shape": list(logits.shape), "scaling": {k: v for k, v in model.base_model.model.model.layers[0].self_attn.q_proj.scaling.items()} if hasattr(model.base_model.model.model.layers[0].self_attn.q_proj, "scaling") else None}))


if __name__ == "__main__":
    main()
