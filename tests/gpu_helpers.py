"""Devices, float32 comparisons and SmolLM2-shaped models for tests/test_gpu.py.

Each test there runs once per device: "cuda" (marked ``gpu``; skipped where CUDA is absent) and
"cpu" (the same checks on any machine, where the device and the CPU reference coincide).
"""
import contextlib

import pytest
import torch

from bench.shapes import build_random_smollm2

HAS_CUDA = torch.cuda.is_available()
NO_CUDA_REASON = "needs a CUDA GPU (CI has none); run `make gpu-check` on a GPU machine"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, needs_cuda])]

# The SmolLM2 shape each device's tests use: the real size on a GPU, a tiny one on a CPU.
SHAPE_ON = {"cuda": "135m", "cpu": "tiny"}

# --- bounds ----------------------------------------------------------------------------------
# Two code paths compared in float32 (bf16 off, TF32 off): the CPU tests' own bounds.
FP32_PROB = 1e-5        # label probabilities
FP32_LOGPROB = 1e-4     # log-probabilities, rewards, losses (absolute, and relative for losses)
# A device's bf16 against the CPU's float32. bf16 keeps 8 significant bits (each rounding is up to
# 2^-8 = 0.4% of the value), and a forward pass rounds at every layer. The bounds are about 5x what
# bf16 on a CPU measured against float32 on random-weight SmolLM2-135M (in brackets).
BF16_LOGPROB = 0.1      # a next-token log-probability (0.016 along sampled tokens, 0.03 anywhere in the vocabulary)
BF16_KL_PER_TOKEN = 0.02  # |KL| at RL's first step, per response token: the policy is the reference (0.006)
BF16_PROB = 0.02        # a label probability (0.0045)
BF16_MASS_REL = 0.05    # the probability on the label tokens, relative (0.0045)
BF16_SCORE = 0.05       # a direct 1-10 score (0.0044)
BF16_REWARD_REL = 0.03  # a reward, relative to the largest reward of the batch (0.0085)
BF16_LOSS_REL = 1e-2    # an SFT loss, relative (3e-5 near the uniform loss of random weights)


@contextlib.contextmanager
def float32_paths():
    """bf16 autocast and bf16 storage off on the GPU (rl.modeling.BF16_ON_GPU) and full-precision
    float32 matmuls (no TF32), so that two code paths can be compared to float32 bounds. (The
    labeler takes its dtype from its config: tests pass dtype="float32".)"""
    import rl.modeling

    before = torch.get_float32_matmul_precision(), rl.modeling.BF16_ON_GPU
    torch.set_float32_matmul_precision("highest")
    rl.modeling.BF16_ON_GPU = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        rl.modeling.BF16_ON_GPU = before[1]


@pytest.fixture(scope="session")
def smollm2_dirs(tmp_path_factory):
    """shape -> a random-weight SmolLM2 folder of that shape (real config and tokenizer), built once."""
    built = {}

    def folder(shape):
        if shape not in built:
            built[shape] = build_random_smollm2(tmp_path_factory.mktemp(f"smollm2-{shape}"), shape,
                                                device="cuda" if HAS_CUDA else "cpu")
        return built[shape]

    return folder
