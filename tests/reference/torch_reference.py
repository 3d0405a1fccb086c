"""PyTorch reference for Perfit's LoRA train step.

Loads a model folder with Hugging Face transformers (LlamaForCausalLM / Qwen2ForCausalLM, eager
attention, float64), adds masked LoRA exactly as Perfit defines it
    y = base(x) + scale * (x @ (A * mA)^T) @ (B * mB)^T
and computes the mean NLL over loss-mask positions and the gradients of every A/B tensor.

Usage: python torch_reference.py CASE_DIR [CASE_DIR...]
CASE_DIR holds case.json (model dir, batch, LoRA layout) and adapter.f32 / mask.u8 (flat, Perfit layout).
Writes result.json (loss) and grads.f64 (flat, same layout) into CASE_DIR.
"""
import json
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

MODULES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}


class MaskedLora(torch.nn.Module):
    def __init__(self, base, A, B, mA, mB, scale):
        super().__init__()
        self.base, self.A, self.B, self.mA, self.mB, self.scale = base, A, B, mA, mB, scale

    def forward(self, x):
        a = self.A * self.mA
        b = self.B * self.mB
        return self.base(x) + self.scale * ((x @ a.T) @ b.T)


def main(case_dir):
    case = json.load(open(f"{case_dir}/case.json"))
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(case["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(case["model_dir"], config=cfg, torch_dtype=torch.float64, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    adapter = np.fromfile(f"{case_dir}/adapter.f32", dtype=np.float32).astype(np.float64)
    mask = np.fromfile(f"{case_dir}/mask.u8", dtype=np.uint8).astype(np.float64)
    params = []
    pairs = {}
    for e in case["entries"]:
        sl = slice(e["offset"], e["offset"] + e["size"])
        t = torch.tensor(adapter[sl].reshape(e["shape"]), requires_grad=True)
        m = torch.tensor(mask[sl].reshape(e["shape"]))
        params.append((e, t))
        pairs.setdefault((e["layer"], e["module"]), {})[e["kind"]] = (t, m)
    for (layer, module), ab in pairs.items():
        parent_name, child = MODULES[module].split(".")
        parent = getattr(model.model.layers[layer], parent_name)
        base = getattr(parent, child)
        setattr(parent, child, MaskedLora(base, ab["A"][0], ab["B"][0], ab["A"][1], ab["B"][1], case["scale"]))

    b, s = case["batch"], case["seq"]
    ids = torch.tensor(case["input_ids"], dtype=torch.long).reshape(b, s)
    attn = torch.tensor(case["attention_mask"], dtype=torch.float64).reshape(b, s)
    loss_mask = torch.tensor(case["loss_mask"], dtype=torch.float64).reshape(b, s)
    logits = model(input_ids=ids, attention_mask=attn.long()).logits
    logp = torch.log_softmax(logits, dim=-1)
    targets = torch.cat([ids[:, 1:], torch.zeros(b, 1, dtype=torch.long)], dim=1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = (nll * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    loss.backward()

    grads = np.zeros(len(adapter), dtype=np.float64)
    for e, t in params:
        grads[e["offset"]:e["offset"] + e["size"]] = t.grad.numpy().reshape(-1)
    grads.tofile(f"{case_dir}/grads.f64")
    json.dump({"loss": loss.item(), "torch": torch.__version__}, open(f"{case_dir}/result.json", "w"))


if __name__ == "__main__":
    for d in sys.argv[1:]:
        main(d)
