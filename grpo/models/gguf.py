"""GGUF -> plain fp32 Hugging Face folder.

transformers dequantises a GGUF into a trainable model but refuses to
`save_pretrained` it ("quantized"); copying its state dict into a fresh model
built from the same config (minus `quantization_config`) gives a normal folder
that transformers and vLLM load directly.
"""

from __future__ import annotations

from pathlib import Path

from grpo.errors import ModelLoadError

# Architectures we convert from GGUF (Llama family: what upcycling also accepts).
SUPPORTED_GGUF_ARCHS = ("llama",)


def gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the reader raises assorted low-level errors on bad files
        raise ModelLoadError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}).") from e
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ModelLoadError(f"{path} has no `general.architecture` field: not a model GGUF.")
    return bytes(field.parts[field.data[0]]).decode()


def convert_gguf(path: Path, out_dir: Path) -> Path:
    """Dequantise `path` into an fp32 safetensors folder at `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    arch = gguf_architecture(path)
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} in {path.name} is not supported (supported: "
            f"{', '.join(SUPPORTED_GGUF_ARCHS)}). Convert it to a Hugging Face folder first."
        )
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight legitimately absent from the GGUF.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion of {path.name}: missing {missing}, unexpected {unexpected}")
    model.generation_config.do_sample = True
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
