"""The data group: what a job trains on and how its responses are scored."""

from __future__ import annotations

from pydantic import model_validator

from openrft.config.fields import URL, Group, field


class DataConfig(Group):
    """What to train on and how it is scored."""

    dataset: str | None = field(
        None,
        "Training prompts: a JSONL file of {messages, ground_truth} rows, or a built-in task "
        "('arithmetic', 'calculator'). Default: the evaluator's input_dataset, else 'arithmetic'.",
    )
    evaluator: str | None = field(
        None,
        "Scoring function: path/to/file.py::function, module:function, or a built-in "
        "('arithmetic', 'calculator', 'gsm8k', 'math', 'code'; weights as options, e.g. 'arithmetic:partial_weight=0'), or an OpenAI "
        "grader spec (grader.json, grader.yaml or inline JSON). Default: the dataset's built-in evaluator.",
    )
    grader_endpoint: str | None = field(
        None,
        "Base URL of an OpenAI-compatible server for the score_model and label_model graders of an "
        "OpenAI grader spec (and the cosine metric's embeddings), e.g. http://localhost:8000/v1; the API "
        "key is read from OPENRFT_GRADER_API_KEY, else OPENAI_API_KEY.",
        valid="an http:// or https:// URL",
        pattern=URL,
    )
    grader_model: str | None = field(
        None,
        "Model asked by score_model/label_model graders instead of the one their spec names, and by the "
        "cosine metric instead of text-embedding-3-large.",
    )
    evaluation_dataset: str | None = field(None, "JSONL prompts scored periodically, never trained on.")
    eval_auto_carveout: float | None = field(
        None,
        "Hold out this fraction of the training prompts (seeded) as the evaluation set; rows that ask the "
        "same question go together, so no held-out question is trained on (unless every row asks the same).",
        valid="a fraction greater than 0 and at most 0.5",
        gt=0,
        le=0.5,
    )
    skip_bad_rows: bool = field(False, "Skip (and count) malformed dataset rows instead of failing.")
    reference_field: str | None = field(
        None,
        "Take each row's ground_truth from this field, a dotted path into nested ones too "
        "('reward_model.ground_truth'); a GSM8K solution '... #### 42' gives 42, a MATH solution its last "
        "\\boxed{} answer. Every dataset the command reads takes it (a job's evaluation dataset too). Default: the "
        "rows' own ground_truth.",
    )

    @model_validator(mode="after")
    def _one_evaluation_set(self) -> DataConfig:
        if self.evaluation_dataset and self.eval_auto_carveout is not None:
            raise ValueError(
                "--eval-auto-carveout and --evaluation-dataset are mutually exclusive: the evaluation set is "
                "either held out of the training prompts or given as its own file"
            )
        return self
