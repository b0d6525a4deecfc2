"""One source per setting: the config dataclasses of rl/config.py make the jobs' defaults and
checks, the start forms, the presets and the experiment config checks; the cores stay plain Python."""
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from django import forms
from django.core.management import CommandError, call_command

from rl import params as P
from rl.config import (
    JOB_CONFIGS,
    Bound,
    RewardModelConfig,
    RLConfig,
    SamplingConfig,
    SFTConfig,
    check_settings,
    job_settings,
    setting,
)
from rl.forms import FORMS, SFTForm

JOB_DEFAULTS = {"sft": P.SFT_DEFAULTS, "sample": P.SAMPLE_DEFAULTS, "reward_model": P.RM_DEFAULTS, "rl": P.RL_DEFAULTS}

# The pure cores: they import neither Django, Celery nor the app's models, even inside functions.
PURE_CORES = ["rl.config", "rl.sft", "rl.reward_model", "rl.reinforce", "rl.sampling", "rl.modeling", "rl.formats",
              "rl.distributed", "rl.export", "labeling.backends", "labeling.prompts", "labeling.scoring",
              "labeling.direct", "evalsite.stats", "evalsite.importers", "evalsite.modelzoo", "evalsite.tasktext",
              "evalsite.builtin_tasks"]


def test_a_jobs_defaults_are_its_dataclass_defaults():
    for kind, config in JOB_CONFIGS.items():
        settings = {f.name: f.default for f in fields(config) if "help" in f.metadata}
        assert settings and {k: JOB_DEFAULTS[kind][k] for k in settings} == settings, kind
        # what the core runs with when the job gives nothing is what the job uses
        assert {k: getattr(config(), k) for k in settings} == settings, kind
    assert RLConfig().batch_size == P.RL_DEFAULTS["batch_size"] == 16  # the jobs' value; the paper's is in the help
    assert SFTConfig().policy_format == "raw" and RLConfig().policy_format == SamplingConfig().policy_format == ""
    # the rest of a job's params is what it works on, not a training setting
    assert set(P.RM_DEFAULTS) - set(P.setting_defaults(RewardModelConfig)) == {
        "labels", "label_config_ids", "include_annotator_rankings", "human_label_field"}


def test_every_setting_has_help_and_a_range_or_choices():
    for config in JOB_CONFIGS.values():
        for f in job_settings(config):
            assert f.metadata["help"].strip(), f.name
            if f.type in (int, float):
                assert f.metadata["bounds"].kind is f.type, f.name
                bound = f.metadata["bounds"]
                assert bound.low <= f.default <= bound.high and not (bound.above_low and f.default == bound.low)
            elif "choices" in f.metadata:
                assert f.default in f.metadata["choices"], f.name


def test_each_form_field_of_a_setting_comes_from_its_dataclass_field():
    for kind, form_class in FORMS.items():
        form = form_class()
        assert form_class.config is JOB_CONFIGS[kind]
        for f in job_settings(form_class.config):
            field, meta = form.fields[f.name], f.metadata
            assert field.initial == f.default, (kind, f.name)
            assert field.help_text.startswith(meta["help"]), (kind, f.name)
            if "bounds" in meta:
                bound = meta["bounds"]
                assert isinstance(field, forms.IntegerField if bound.kind is int else forms.FloatField)
                assert field.help_text.endswith(bound.describe()) and field.widget.attrs["max"] == bound.high
                assert field.widget.attrs.get("min") == (None if bound.above_low else bound.low)
            if "choices" in meta:
                assert dict(field.choices) == meta["choices"] and field.required == ("" not in meta["choices"])
            if "paper" in meta:
                assert "The paper used" in field.help_text
    rl = FORMS["rl"]()
    assert rl.fields["beta"].label == "β (KL weight)" and "The paper used 0.05." in rl.fields["beta"].help_text
    assert "The paper used 128." in rl.fields["batch_size"].help_text and rl.fields["batch_size"].initial == 16


def test_a_changed_dataclass_changes_the_form():
    @dataclass
    class Changed(SFTConfig):
        epochs: int = setting(3, "Passes (changed for a test).", Bound(int, 2, 5), label="Passes")
        optimizer: str = setting("sgd", "Only one.", choices={"sgd": "plain SGD"})

    class ChangedForm(SFTForm):
        config = Changed

    form = ChangedForm()
    epochs = form.fields["epochs"]
    assert (epochs.initial, epochs.label, epochs.help_text) == (3, "Passes", "Passes (changed for a test). From 2 to 5.")
    assert epochs.widget.attrs == {"min": 2, "max": 5}
    assert form.fields["optimizer"].choices == [("sgd", "plain SGD")] and form.fields["optimizer"].initial == "sgd"
    assert list(form.fields)[:5] == ["name", "policy", "base_model", "dataset", "learning_rate"]  # order kept
    assert SFTForm().fields["epochs"].initial == 1  # the original form is untouched


def test_settings_are_checked_against_their_dataclass_bounds_and_choices():
    for config in JOB_CONFIGS.values():
        checked, errors = check_settings(config, P.setting_defaults(config))
        assert not errors and checked == P.setting_defaults(config)
        for f in job_settings(config):
            if "bounds" in f.metadata:
                bound = f.metadata["bounds"]
                _, errors = check_settings(config, {f.name: bound.high * 2 + 1})
                assert errors[f.name] == [f"{f.name.replace('_', ' ')} must be at most "
                                          f"{bound.high_text or f'{bound.high:g}'}."]
    checked, errors = check_settings(RLConfig, {"batch_size": "8", "policy_format": None, "optimizer": "sgd",
                                                "accelerate_config": 5})
    assert checked["batch_size"] == 8 and checked["policy_format"] == ""
    assert errors == {"optimizer": ["optimizer must be one of adamw, adafactor; got 'sgd'."],
                      "accelerate_config": ["accelerate config must be text (got 5)."]}


def test_experiment_config_keys_that_are_no_setting_are_refused():
    from evalsite.experiments.pipeline import config_errors
    from evalsite.experiments.presets import PRESETS, merged_config

    for preset in PRESETS:
        assert config_errors(merged_config(preset)) == [], preset
    messages = config_errors(merged_config("demo", {"rl": {"betta": 0.1}, "rl_promts": 3,
                                                    "pairs": {"make_pairs": False, "temprature": 1}}))
    assert any(m.startswith("rl: 'betta' is not a setting of RLConfig (rl/config.py); its settings are: beta, ")
               for m in messages), messages
    assert any(m.startswith("pairs: 'make_pairs', 'temprature' are not settings of SamplingConfig") for m in messages)
    assert any(m.startswith("Unknown key 'rl_promts'; an experiment config has sft_prompts, ") for m in messages)
    assert len(messages) == 3
    assert config_errors(merged_config("demo", {"policy_format": "markdown"})) == [
        "policy format must be one of raw, chat, auto; got 'markdown'."]


def test_experiment_labeler_and_round_sections_are_checked_as_their_models_check_them():
    from evalsite.experiments.pipeline import config_errors
    from evalsite.experiments.presets import merged_config

    messages = config_errors(merged_config("demo", {
        "labeler": {"batch_size": 0, "dtype": "fp8", "chain_of_thougth": True, "threads": 4},
        "round": {"overlap": 3, "questions": "rank"}}))
    assert "labeler: unknown key 'chain_of_thougth'; it takes preamble_variant, batch_size, max_prompt_tokens, " \
           "chain_of_thought, dtype, threads." in messages, messages
    assert "round: unknown key 'questions'; it takes overlap, question." in messages
    assert any(m.startswith("labeler: batch size: ") and "greater than or equal to 1" in m for m in messages), messages
    assert any(m.startswith("labeler: dtype: ") and "'fp8' is not a valid choice" in m for m in messages), messages
    assert len(messages) == 4
    assert config_errors(merged_config("demo", {"round": {"question": "best"}, "labeler": [1]})) == [
        "labeler: expected an object of settings, found list.",
        "round: question must be one of rank, harmless, both; got 'best'."]
    assert config_errors(merged_config("demo", {"labeler": {"batch_size": 4, "dtype": "float32"},
                                                "round": {"question": "both"}})) == []



def test_the_decode_cache_is_a_choice_of_the_sampling_and_rl_settings():
    from evalsite.experiments.pipeline import config_errors
    from evalsite.experiments.presets import merged_config

    assert RLConfig().decode_cache == SamplingConfig().decode_cache == ""  # static on a GPU, dynamic on a CPU
    assert config_errors(merged_config("demo", {"rl": {"decode_cache": "dynamic"},
                                                "eval": {"decode_cache": "static"}})) == []
    assert config_errors(merged_config("demo", {"pairs": {"decode_cache": "fast"}})) == [
        "pairs: decode cache must be one of static, dynamic (or empty: static on a GPU, dynamic on a CPU); got 'fast'."]


def test_the_paper_preset_takes_the_papers_values_from_the_dataclasses():
    from evalsite.experiments.presets import PRESETS

    paper = PRESETS["paper"]
    assert {k: paper["rl"][k] for k in ("beta", "temperature", "batch_size", "learning_rate", "epochs")} == {
        "beta": 0.05, "temperature": 0.9, "batch_size": 128, "learning_rate": 1e-5, "epochs": 8}
    assert paper["reward_model"] == {"learning_rate": 1e-5, "epochs": 3, "batch_size": 32, "max_length": 1152,
                                     "optimizer": "adafactor"}
    for section, config in (("rl", RLConfig), ("reward_model", RewardModelConfig)):
        for f in job_settings(config):
            if "paper" in f.metadata:
                assert paper[section][f.name] == f.metadata["paper"]


@pytest.mark.django_db
def test_experiment_form_and_yaml_refuse_a_key_that_is_no_setting(tiny_model_dir, tmp_path):
    import yaml

    from evalsite.experiments.admin import ExperimentForm
    from evalsite.experiments.models import Experiment
    from tests.test_experiment import make_data

    ds, prefs, base = make_data(tiny_model_dir)
    data = {"name": "typo", "task": ds.task_id, "dataset": ds.pk, "base_policy": base.pk, "preset": "demo",
            "arms": ["sft"], "config": '{"sft": {"learning_rte": 0.001}}'}
    form = ExperimentForm(data=data)
    assert not form.is_valid()
    assert any(e.startswith("sft: 'learning_rte' is not a setting of SFTConfig") for e in form.errors["config"])
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "yaml typo", "dataset": "tiny-posts:test", "base_model": "tiny base",
                                   "arms": ["sft"], "config": {"reward_model": {"epoch": 2}}}))
    with pytest.raises(CommandError, match="reward_model: 'epoch' is not a setting of RewardModelConfig"):
        call_command("run_experiment", str(cfg))
    assert not Experiment.objects.get(name="yaml typo").stages  # nothing ran


def test_the_pure_cores_import_neither_django_nor_celery_nor_the_app():
    app = ("django", "celery", "evalsite.models", "evalsite.jobs", "rl.params", "rl.data", "rl.jobs", "labeling.data",
           "labeling.models")
    code = (f"import importlib, sys\nfor m in {PURE_CORES!r}: importlib.import_module(m)\n"
            f"print(sorted(n for n in sys.modules if n.startswith({app!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
