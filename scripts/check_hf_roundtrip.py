#!/usr/bin/env python3
"""Check that HF transformers loads a folder saved by the `train` crate and gives the expected logits.

The Rust test `saved_folder_loads_in_core_with_identical_logits` (train/tests/engine.rs) saves
the tiny fixtures through `TrainModel::save`. Keep its output with

    DGPO_KEEP_SAVED=/tmp/saved cargo test -p train --test engine saved_folder

then run

    python3 scripts/check_hf_roundtrip.py /tmp/saved/tiny-qwen2 tests/fixtures/tiny-qwen2/reference.json
    python3 scripts/check_hf_roundtrip.py /tmp/saved/tiny-llama tests/fixtures/tiny-llama/reference.json

The saved weights are the fixture's own, so transformers must reproduce the fixture's reference
logits (written by scripts/fixtures/make_fixtures.py) to 1e-4. Needs torch and transformers.
"""

import json
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    folder, ref_path = sys.argv[1], sys.argv[2]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = json.load(open(ref_path))
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    model.eval()
    AutoTokenizer.from_pretrained(folder)  # tokenizer.json must load too
    ids = torch.tensor([ref["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0]
    diff = (logits - torch.tensor(ref["logits"])).abs().max().item()
    print(f"{folder}: max |logit diff| vs reference = {diff:.3g}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
