"""Times PyTorch's LoRA train step on the SmolLM2-135M shape (random weights, float32, CPU).

Same workload as bench/model_train_step.ts: LoRA r=8 (alpha 16) on q and v with 0/1 masks,
batch 4, sequence 256, loss = mean NLL over all but the last position; forward + backward.
Usage: python torch_bench.py [STEPS] [LAYERS]  -> prints one JSON line (LAYERS defaults to 30, the real shape).
"""
import json
import resource
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_reference import MaskedLora  # noqa: E402


def peak_rss_mb():
    # VmHWM belongs to this exec'd image; ru_maxrss would also count the parent's peak inherited at fork.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(steps, layers):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
                      rope_theta=100000, max_position_embeddings=8192, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float()
    for p in model.parameters():
        p.requires_grad_(False)
    r, scale, params = 8, 2.0, []
    for layer in model.model.layers:
        for name in ("q_proj", "v_proj"):
            base = getattr(layer.self_attn, name)
            A = (torch.rand(r, base.in_features) * 2 - 1) / base.in_features ** 0.5
            B = torch.randn(base.out_features, r) * 0.01
            A.requires_grad_(True)
            B.requires_grad_(True)
            params += [A, B]
            setattr(layer.self_attn, name, MaskedLora(base, A, B, torch.ones_like(A), torch.ones_like(B), scale))
    b, s = 4, 256
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    attn = torch.ones(b, s, dtype=torch.long)

    def step():
        for p in params:
            p.grad = None
        logits = model(input_ids=ids, attention_mask=attn).logits
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        loss = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).mean()
        loss.backward()
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps,
        "step_s": med, "tokens_per_s": b * s / med,
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2, int(sys.argv[2]) if len(sys.argv) > 2 else 30)
