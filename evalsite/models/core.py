"""The core domain: tasks, datasets, prompts, policies, samples and comparisons."""
import hashlib

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


# What the chain-of-thought step asks for when a task does not say ({noun}: its response name).
DEFAULT_COT_INSTRUCTION = "Consider the overall quality of each {noun} and explain which one is better."


class Task(models.Model):
    """What is labeled and rated: one of the paper's three tasks (built in) or a researcher's own.

    Every part reads its texts from here through :meth:`text`: the AI labeler (preambles, names,
    ending), the direct scorer (rubric), policies (``policy_template``), rounds (name, response
    name, instructions) and reports (name). Built-in rows are written by migrations and again
    after every migrate (``evalsite.seed``); custom ones in the admin or with ``manage.py load_task``.
    """

    SUMMARIZATION = "summarization"
    HELPFUL = "helpful"
    HARMLESS = "harmless"

    slug = models.SlugField(unique=True, help_text="Short name used by importers (--task) and jobs.")
    name = models.CharField(max_length=100, unique=True)
    builtin = models.BooleanField(
        default=False, editable=False,
        help_text="One of the paper's three tasks: it cannot be deleted and its slug cannot change.",
    )
    input_name = models.CharField(
        max_length=40, default="Text",
        help_text='What the input is called in labeler prompts: "Text", "Question", "Conversation".',
    )
    # What a response is called in prompts and on the rating page ("summary", "response").
    response_noun = models.CharField(
        "response name", max_length=30, default="response",
        help_text='What a response is called, in lower case ("summary", "answer"); labeler prompts '
                  'capitalize it ("Summary 1 - ...").',
    )
    preamble_base = models.TextField(
        "Base preamble", blank=True,
        help_text="The labeler's short task description (the paper's Base preamble); ends by asking for 1 or 2.",
    )
    preamble_detailed = models.TextField(
        "Detailed preamble", blank=True,
        help_text="The labeler's preamble with the rating criteria spelled out (the paper's Detailed preamble).",
    )
    ending = models.CharField(
        max_length=200, default="Preferred {noun}=",
        help_text="What the labeler's answer starts with; the label token follows it. May use {noun}.",
    )
    cot_instruction = models.TextField(
        "chain-of-thought instruction", blank=True,
        help_text="What the labeler's chain-of-thought step asks for. May use {noun}.",
    )
    direct_rubric = models.TextField(
        blank=True, help_text="The direct scorer's rubric (direct RLAIF): one response, a score from 1 to 10.",
    )
    policy_template = models.TextField(
        default="{input}",
        help_text='The text a policy continues; {input} is replaced by the prompt (e.g. "{input}\n\nAnswer:").',
    )
    turn_markers = models.JSONField(
        default=list, blank=True,
        help_text='Strings that end a sampled response, e.g. ["\n\nHuman:"]: the text from the first one on is cut.',
    )
    conversational = models.BooleanField(
        default=False,
        help_text="The input is a dialogue of Human:/Assistant: turns: raters see turns, labelers keep the "
                  "latest turns of a long one.",
    )
    instructions = models.TextField("rater instructions", blank=True, help_text="Shown to human raters.")

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.name

    def clean(self):
        from evalsite.tasktext import validate_task_texts

        errors = validate_task_texts(
            policy_template=self.policy_template, ending=self.ending, cot_instruction=self.cot_instruction,
            turn_markers=self.turn_markers,
        )
        if self.builtin and self.pk:
            stored = Task.objects.filter(pk=self.pk).values_list("slug", flat=True).first()
            if stored and stored != self.slug:
                errors["slug"] = f"{self.name} is a built-in task: its slug stays {stored!r}."
        if errors:
            raise ValidationError(errors)

    def text(self):
        """The task as the plain-Python cores take it (labeler, direct scorer, policy prompts)."""
        from evalsite.tasktext import TaskText

        return TaskText(
            slug=self.slug, name=self.name, input_name=self.input_name, response_name=self.response_noun,
            preamble_base=self.preamble_base, preamble_detailed=self.preamble_detailed, ending=self.ending,
            cot_instruction=self.cot_instruction or DEFAULT_COT_INSTRUCTION.format(noun=self.response_noun),
            direct_rubric=self.direct_rubric,
            policy_template=self.policy_template, turn_markers=tuple(self.turn_markers or ()),
            conversational=self.conversational, rater_instructions=self.instructions,
        )


class Dataset(models.Model):
    name = models.CharField(max_length=200)
    split = models.CharField(max_length=50, default="train")
    task = models.ForeignKey(Task, on_delete=models.PROTECT, related_name="datasets")
    source = models.CharField(max_length=500, blank=True, help_text="Where the data came from.")
    licence = models.CharField(max_length=100, blank=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    import_job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name", "split"]
        constraints = [
            models.UniqueConstraint(fields=["name", "split"], name="dataset_unique_name_split"),
        ]

    def __str__(self):
        return f"{self.name} [{self.split}]"


class Prompt(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="prompts")
    external_id = models.CharField(max_length=200, help_text="Unique within its dataset.")
    context = models.TextField(help_text="The input: a post to summarize or a dialogue so far.")
    reference = models.TextField(blank=True, help_text="Optional reference response (e.g. human TL;DR).")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "external_id"], name="prompt_unique_external_id"),
        ]

    def __str__(self):
        return f"{self.dataset.name}/{self.external_id}"


class PolicyFormat(models.TextChoices):
    """How a policy is prompted and where its responses end (rl/formats.py)."""

    RAW = "raw", "Raw text (a base model continues the task's text)"
    CHAT = "chat", "Chat template (the response is the assistant turn)"


class Policy(models.Model):
    class Kind(models.TextChoices):
        SFT = "sft", "SFT"
        RLHF = "rlhf", "RLHF"
        RLAIF_DISTILLED = "rlaif_distilled", "RLAIF (distilled)"
        RLAIF_DIRECT = "rlaif_direct", "RLAIF (direct)"
        REFERENCE = "reference", "Reference (human-written)"
        OTHER = "other", "Other"

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.OTHER)
    base_model = models.CharField(
        max_length=500, blank=True, help_text="Hub id or local folder this policy started from."
    )
    checkpoint_dir = models.CharField(
        max_length=1000, blank=True, help_text="Hugging Face folder holding the weights (empty for 'reference')."
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="policies",
        help_text="The job that produced this policy.",
    )
    reward_source = models.CharField(
        max_length=300, blank=True, help_text="For RL policies: the reward model or scorer used."
    )
    policy_format = models.CharField(
        max_length=10, choices=PolicyFormat.choices, default=PolicyFormat.RAW,
        help_text="How it is prompted: raw text or its chat template (what it was trained in).",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "policies"

    def __str__(self):
        return self.name


class Sample(models.Model):
    """A policy's response to a prompt."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="samples")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="samples")
    index = models.PositiveIntegerField(default=0, help_text="Which of the n samples for this prompt.")
    text = models.TextField()
    token_count = models.PositiveIntegerField(null=True, blank=True)
    generation = models.JSONField(default=dict, blank=True, help_text="Temperature, top-p, seed, ...")
    policy_format = models.CharField(max_length=10, choices=PolicyFormat.choices, default=PolicyFormat.RAW,
                                     help_text="How the policy was prompted for it.")
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="samples"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["prompt_id", "policy_id", "index"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "prompt", "index"], name="sample_unique_policy_prompt_index"),
        ]
        indexes = [models.Index(fields=["prompt", "policy"])]

    def __str__(self):
        return f"{self.policy} on {self.prompt_id} #{self.index}"


class Preference(models.TextChoices):
    FIRST = "first", "First"
    SECOND = "second", "Second"
    TIE = "tie", "Tie"


def pair_key(prompt_id, response_a, response_b, sample_a_id=None, sample_b_id=None):
    """Stable identity of (prompt, first response, second response); makes imports idempotent.

    Pairs of samples also include the sample ids: two policies may well write the same text,
    and each pair of samples is its own comparison.
    """
    h = hashlib.sha256()
    parts = [str(prompt_id), response_a, response_b]
    if sample_a_id is not None or sample_b_id is not None:
        parts.append(f"samples:{sample_a_id}:{sample_b_id}")
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class Comparison(models.Model):
    """A prompt with two responses: what AI labelers label and alignment is measured on.

    ``human_preference`` is the human label where one is known (from a dataset or an
    annotator). ``judge_preference`` holds a preference from an external AI judge shipped
    with a dataset (e.g. the GPT-4 judgments of TL;DR): an AI label, never counted as human.
    """

    class Source(models.TextChoices):
        NONE = "", "None"
        DATASET = "dataset", "Dataset"
        ANNOTATOR = "annotator", "Annotator"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="comparisons")
    response_a = models.TextField()
    response_b = models.TextField()
    sample_a = models.ForeignKey(Sample, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    sample_b = models.ForeignKey(Sample, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    key = models.CharField(max_length=64, editable=False, help_text="sha256 of prompt and both responses.")
    human_preference = models.CharField(max_length=6, choices=Preference.choices, blank=True)
    human_source = models.CharField(max_length=10, choices=Source.choices, blank=True)
    judge_preference = models.CharField(max_length=6, choices=Preference.choices, blank=True)
    judge_name = models.CharField(max_length=100, blank=True, help_text="e.g. 'GPT-4 (dataset)'.")
    metadata = models.JSONField(default=dict, blank=True)
    job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="comparisons"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["key"], name="comparison_unique_key"),
            models.CheckConstraint(
                condition=Q(human_preference="") | ~Q(human_source=""),
                name="comparison_human_preference_has_source",
            ),
            models.CheckConstraint(
                condition=Q(judge_preference="") | ~Q(judge_name=""),
                name="comparison_judge_preference_has_name",
            ),
        ]
        indexes = [models.Index(fields=["prompt"]), models.Index(fields=["human_preference"])]

    def save(self, *args, **kwargs):
        self.key = pair_key(self.prompt_id, self.response_a, self.response_b, self.sample_a_id, self.sample_b_id)
        super().save(*args, **kwargs)

    def __str__(self):
        return f"Comparison {self.pk} on {self.prompt_id}"
