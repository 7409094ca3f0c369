#!/usr/bin/env python3
"""Time the training step of `cargo bench -p train --bench train_throughput` in PyTorch.

One update (forward, backward, AdamW) of a randomly initialised Qwen2.5-0.5B-shaped model
(hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocabulary 151936, tied
embeddings), batch 1 x 512 tokens, f32 on CPU, median of 3 after one warm-up step. Run it on
the machine that ran the Rust bench, with the same thread count, and compare tokens/s:

    RAYON_NUM_THREADS=2 cargo bench -p train --bench train_throughput
    python3 scripts/bench_train_torch.py --threads 2

Needs `torch` and `transformers` (not installed in this project's environment).
"""

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(cfg).float()
    model.train()
    n = sum(p.numel() for p in model.parameters())
    print(f"Qwen2.5-0.5B shape: {n / 1e6:.1f}M parameters, {torch.get_num_threads()} threads")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (1, args.seq))

    def step(update: bool) -> float:
        t = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        if update:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    step(True)
    full = statistics.median(step(True) for _ in range(args.steps))
    fb = statistics.median(step(False) for _ in range(args.steps))
    tok = args.seq
    print(
        f"batch 1 x seq {tok}: update {full:.3f} s ({tok / full:.0f} tokens/s), "
        f"forward+backward {fb:.3f} s ({tok / fb:.0f} tokens/s)"
    )


if __name__ == "__main__":
    main()
