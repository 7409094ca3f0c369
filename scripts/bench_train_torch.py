#!/usr/bin/env python3
"""Time the training step of `cargo bench -p train --bench train_throughput` in PyTorch.

One update (forward, backward, gradient clipping, AdamW) of a randomly initialised Qwen2-architecture
model, by default in the Qwen2.5-0.5B shape
(hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocabulary 151936, tied
embeddings), batch 1 x 512 tokens, f32 on CPU, median of 3 after one warm-up step. Run it on
the machine that ran the Rust bench, with the same thread count, and compare tokens/s:

    RAYON_NUM_THREADS=2 cargo bench -p train --bench train_throughput   # runs this script too
    python3 scripts/bench_train_torch.py --threads 2                   # the 0.5B step alone

Other shapes through the flags (the bench passes the tiny presets' shapes). `--device cuda
--dtype bf16` times the step on a GPU in bf16 autocast (f32 weights and AdamW state, as our bf16
run keeps f32 master weights and moments), synchronising before each clock read. Needs `torch`
and `transformers` (pip); the bench skips the peer when they cannot be imported.
"""

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    # Shape; the defaults are Qwen2.5-0.5B's.
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--intermediate", type=int, default=4864)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    device = torch.device(args.device)
    model = Qwen2ForCausalLM(cfg).float().to(device)
    model.train()
    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n = sum(p.numel() for p in model.parameters())
    print(f"{n / 1e6:.2f}M parameters, {torch.get_num_threads()} threads, {device} {args.dtype}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq)).to(device)

    def step(update: bool) -> float:
        sync()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=half, enabled=half is not None):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        if update:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t

    step(True)
    full = statistics.median(step(True) for _ in range(args.steps))
    fb = statistics.median(step(False) for _ in range(args.steps))
    tok = args.batch * args.seq
    print(
        f"batch {args.batch} x seq {args.seq}: update {full:.3f} s ({tok / full:.0f} tokens/s), "
        f"forward+backward {fb:.3f} s ({tok / fb:.0f} tokens/s)"
    )
    # Machine-readable, read by train/benches/train_throughput.rs.
    print(f"update_s {full}")


if __name__ == "__main__":
    main()
