from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Make a trained reward model loadable by AutoModelForSequenceClassification.from_pretrained(folder, "
            "num_labels=1) as the app scores it (TRL, OpenRLHF, RewardBench), with a README.md model card: "
            "in its own folder, or as a copy at --to. Reward models trained now are saved this way already.")

    def add_arguments(self, parser):
        parser.add_argument("reward_model_id", type=int)
        parser.add_argument("--to", help="Write a copy to this folder instead of updating the model's own folder")

    def handle(self, *args, **o):
        from transformers import AutoConfig, AutoTokenizer

        from rl.cards import reward_model_card_text
        from rl.data import preference_rows
        from rl.export import export_reward_model
        from rl.models import RewardModel
        from rl.reward_model import is_causal_lm

        rm = RewardModel.objects.filter(pk=o["reward_model_id"]).select_related("task", "job").first()
        if rm is None:
            raise CommandError(f"Unknown reward model {o['reward_model_id']}.")
        folder = Path(rm.checkpoint_dir)
        if not (folder / "config.json").is_file():
            raise CommandError(f"Reward model {rm.pk} ({rm.name}): {folder} is not a model folder.")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompt_ids = set()
        if rm.job is not None and rm.job.params:
            try:  # the job's data, as it is now (labels added since are counted too)
                prompt_ids = {row[0] for row in preference_rows({**rm.job.params, "labels": rm.labels})}
            except Exception as e:  # the card then says the data was not recorded
                self.stderr.write(f"could not list the training data: {e}")
        card = reward_model_card_text(rm, tokenizer=tokenizer, causal=is_causal_lm(AutoConfig.from_pretrained(folder)),
                                      prompt_ids=prompt_ids)
        try:
            out = export_reward_model(folder, card, dest=o["to"])
        except ValueError as e:
            raise CommandError(f"Reward model {rm.pk} ({rm.name}): {e}")
        self.stdout.write(self.style.SUCCESS(f"Reward model {rm.pk} ({rm.name}) -> {out}"))
