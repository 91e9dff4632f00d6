"""Decode and prefill on one CUDA GPU: herd vs transformers on a Llama-3.2-1B-shaped model, bf16.

Not yet run: no GPU has been available to this project's sessions. It needs a CUDA build of torch
(pyproject pins the CPU wheel) and transformers; nothing is downloaded (random weights).

Both engines run the same weights: herd's `Transformer` (preset llama3.2-1b, `init_weights`) and
transformers' `LlamaForCausalLM` with the same config, loaded with herd's state dict through
`herd.formats.hf.to_hf_state_dict`. herd's `DecodeModel` is not measured: its kernels are CPU code.

- decode tokens/s, batch 1 = (N - 1) / (time(N tokens) - time(1 token)), greedy, forced to N,
  on a 90-token prompt: herd's Engine and transformers' `generate`; also herd's bare forward per
  token (`step`: the model alone, no sampling or Python bookkeeping of the Engine);
- prefill tokens/s = 512 / one forward over 512 tokens that fills the KV cache, last logits only;
- roofline fraction = weight bytes x decode tokens/s / peak bandwidth. --peak-gbps defaults to a
  measured device-to-device copy (bytes read + written / time), which is below the data sheet.

    python benchmarks/generate_gpu.py                      # --rounds 3 --new-tokens 64 --peak-gbps ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def copy_gbps(device: torch.device, nbytes: int = 2**30) -> float:
    """Device-to-device copy bandwidth (read + write), median of 10 after a warm-up."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timed(lambda: dst.copy_(src), device) for _ in range(10)]
    return 2 * nbytes / statistics.median(times) / 1e9


def decode_rate(generate, n: int) -> float:
    generate(4)  # warm-up
    one = statistics.median(generate(1) for _ in range(3))
    return (n - 1) / (generate(n) - one)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama3.2-1b")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=90)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--peak-gbps", type=float, default=None, help="peak memory bandwidth, GB/s (default: measured)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script (--preset tiny)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate_gpu.json"))
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"generate_gpu.py: no CUDA device (torch {torch.__version__}, cuda available: False); run it on a GPU")

    from transformers import LlamaConfig, LlamaForCausalLM

    from herd.formats.hf import hf_config_from_args, to_hf_state_dict
    from herd.inference import Engine, SamplingParams
    from herd.model import build_model
    from herd.model.args import count_params, flops_per_token, get_preset
    from herd.tokenizer import Llama3Tokenizer

    torch.manual_seed(0)
    args = get_preset(a.preset)
    dtype = torch.bfloat16
    herd = build_model(args, device=device, dtype=dtype).eval()
    with torch.device(device):
        hf = LlamaForCausalLM(LlamaConfig(**hf_config_from_args(args, dtype))).to(dtype).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(args, herd.state_dict()), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert not args.tie_embeddings or hf.lm_head.weight is hf.model.embed_tokens.weight
    weight_bytes = count_params(args)["total"] * torch.finfo(dtype).bits // 8  # a tied matrix once
    peak_gbps = a.peak_gbps or copy_gbps(device)

    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab_size, (a.prompt_tokens,), generator=gen).tolist()
    long = torch.randint(0, args.vocab_size, (1, a.prefill_tokens), generator=gen).to(device)
    last_only = torch.zeros(long.shape, dtype=torch.bool, device=device)
    last_only[:, -1] = True

    engine = Engine(herd, Llama3Tokenizer(), max_batch_size=1)  # Meta's tokenizer, shipped with llama-models

    def herd_generate(n: int) -> float:
        params = SamplingParams(max_new_tokens=n, stop_token_ids=[])
        return timed(lambda: engine.generate([prompt], params), device)

    @torch.inference_mode()
    def herd_steps(n: int) -> float:
        herd.setup_caches(1, len(prompt) + n)
        ids = torch.tensor([prompt], device=device)

        def run() -> None:
            tok = herd(ids, cache_pos=0)[:, -1].argmax(-1, keepdim=True)
            for pos in range(len(prompt), len(prompt) + n - 1):
                tok = herd(tok, cache_pos=pos)[:, -1].argmax(-1, keepdim=True)

        dt = timed(run, device)
        herd.clear_caches()
        return dt

    @torch.inference_mode()
    def herd_prefill() -> float:
        herd.setup_caches(1, long.shape[1])
        dt = timed(lambda: herd(long, cache_pos=0, output_mask=last_only), device)
        herd.clear_caches()
        return dt

    hf_prompt = torch.tensor([prompt], device=device)

    @torch.inference_mode()
    def hf_generate(n: int) -> float:
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return timed(lambda: hf.generate(hf_prompt, attention_mask=torch.ones_like(hf_prompt), **kw), device)

    @torch.inference_mode()
    def hf_prefill() -> float:
        return timed(lambda: hf(long, use_cache=True, logits_to_keep=1), device)

    engines = {
        "herd": (herd_generate, herd_prefill),
        "herd-step": (herd_steps, None),
        "transformers": (hf_generate, hf_prefill),
    }
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for r in range(a.rounds):
        for name, (generate, prefill) in engines.items():
            row = {"decode_tokens_per_s": decode_rate(generate, a.new_tokens)}
            if prefill is not None:
                prefill()  # warm-up
                row["prefill_tokens_per_s"] = a.prefill_tokens / statistics.median(prefill() for _ in range(3))
            if device.type == "cuda":
                row["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            runs[name].append(row)
            print(f"round {r + 1} {name}: {row}", file=sys.stderr)

    flops = flops_per_token(args, a.prefill_tokens)["forward"]
    median = {}
    for name, rows in runs.items():
        m = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        m["decode_roofline_fraction"] = weight_bytes * m["decode_tokens_per_s"] / (peak_gbps * 1e9)
        if "prefill_tokens_per_s" in m:
            m["prefill_tflops"] = flops * m["prefill_tokens_per_s"] / 1e12
        median[name] = m
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "settings": vars(a) | {"dtype": "bfloat16", "weights": "random (herd init_weights), same in both"},
        "weight_bytes": weight_bytes,
        "peak_gbps": peak_gbps,
        "peak_gbps_source": "--peak-gbps" if a.peak_gbps else "measured device-to-device copy",
        "median": median,
        "herd_over_transformers": {
            k: median["herd"][k] / median["transformers"][k] for k in ("decode_tokens_per_s", "prefill_tokens_per_s")
        },
        "runs": runs,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"weights {weight_bytes / 1e9:.2f} GB, peak {peak_gbps:.0f} GB/s ({result['peak_gbps_source']})")
    print(f"| engine | decode tok/s | roofline fraction | prefill-{a.prefill_tokens} tok/s | prefill TFLOP/s |")
    print("|---|---|---|---|---|")
    for name, m in median.items():
        prefill = f"{m['prefill_tokens_per_s']:.0f} | {m['prefill_tflops']:.1f}" if "prefill_tflops" in m else " | "
        print(f"| {name} | {m['decode_tokens_per_s']:.1f} | {m['decode_roofline_fraction']:.2f} | {prefill} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
