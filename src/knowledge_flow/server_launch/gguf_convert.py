"""Convert the packaged Qwen2.5 GGUF model into a bf16 safetensors folder that vLLM can load.

A standalone script: run it with the interpreter of a vLLM environment (it needs ``transformers``, ``torch``,
``gguf`` and ``accelerate``, and nothing from knowledge_flow)::

    python gguf_convert.py MODEL.gguf OUT_DIR [--source-sha256 HEX]

The GGUF weights are dequantised by transformers; the quantizer it attaches is cleared so that
``save_pretrained`` writes plain bf16 tensors. End of turn (151645) and end of text (151643) both stop
generation, and the sampling defaults are those of Qwen's own release. OUT_DIR must not exist; it is written
completely or not at all (written beside it first, then renamed), and holds ``kflow-convert.json``: the source,
and the name and size of every file written, so that a reader can verify the folder without loading it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

# Run by path, this file's folder comes first on sys.path, and its sibling `vllm.py` would shadow the real vllm
# package: drop the folder.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

EOS_IDS = [151645, 151643]  # <|im_end|>, <|endoftext|>
PAD_ID = 151643
# The sampling defaults of Qwen2.5-Instruct's generation_config.json. The GGUF file does not carry them; vLLM
# fills omitted request parameters from them (unless started with --generation-config vllm), as it does for a
# model downloaded from Qwen's repository.
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
MARKER = "kflow-convert.json"
FORMAT_VERSION = 1


def convert(gguf: Path, out_dir: Path, dtype_name: str = "bfloat16", source_sha256: str = "") -> dict[str, object]:
    torch = importlib.import_module("torch")  # imported by name: the package's own environment has neither
    transformers = importlib.import_module("transformers")
    auto_model, auto_tokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    started = time.monotonic()
    dtype = getattr(torch, dtype_name)
    tokenizer = auto_tokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = auto_model.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    model.hf_quantizer = None
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.config.eos_token_id = EOS_IDS[0]
    model.config.pad_token_id = PAD_ID
    if model.generation_config is not None:
        model.generation_config.eos_token_id = list(EOS_IDS)
        model.generation_config.pad_token_id = PAD_ID
        for key, value in SAMPLING_DEFAULTS.items():
            setattr(model.generation_config, key, value)
    model.to(dtype)
    partial = out_dir.parent / f".{out_dir.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(str(partial), safe_serialization=True)
        tokenizer.save_pretrained(str(partial))
        config = json.loads((partial / "config.json").read_text())
        if "quantization_config" in config:
            raise RuntimeError("the saved config still names a quantization method")
        if not list(partial.glob("*.safetensors")):
            raise RuntimeError("no safetensors file was written")
        record: dict[str, object] = {
            "format": FORMAT_VERSION,
            "source": gguf.name,
            "source_size": gguf.stat().st_size,
            "source_sha256": source_sha256,
            "dtype": dtype_name,
            "eos_token_id": list(EOS_IDS),
            "seconds": round(time.monotonic() - started, 1),
            "files": {path.name: path.stat().st_size for path in sorted(partial.iterdir()) if path.is_file()},
        }
        (partial / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        os.replace(partial, out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--source-sha256", default="", help="recorded in kflow-convert.json")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        print(f"error: {args.gguf} does not exist", file=sys.stderr)
        return 2
    if args.out_dir.exists():
        print(f"error: {args.out_dir} already exists", file=sys.stderr)
        return 2
    record = convert(args.gguf, args.out_dir, args.dtype, args.source_sha256)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
