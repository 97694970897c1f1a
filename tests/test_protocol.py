"""The papers' protocol, exactly: BOS, prompt templates, accuracy rules, harmful-score prompt sets, and what each
paper preset runs (issue 12).

Golden strings are written out by hand from the authors' code (git-disl/Lisa, Vaccine, Booster, Antidote:
``PROMPT_DICT`` in train.py / utils.py, ``query`` in sst2|agnews|gsm8k/pred_eval.py and poison/evaluation/pred.py),
never composed from tuneguard's own constants. Fixture rows hold placeholder text only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, harmful_data_roles
from pydantic import BaseModel

from tuneguard.config import DataSource, ExperimentConfig, load_config
from tuneguard.data import load_records, resolve_template, tokenize_sft
from tuneguard.data.provenance import check_disjoint_roles
from tuneguard.data.registry import DATA_DIR_ENV
from tuneguard.data.templates import encode_prompt
from tuneguard.eval.generation import encode_batch, generate
from tuneguard.eval.metrics import answer_matches, final_number, task_accuracy

README = Path(__file__).parents[1] / "README.md"
PAPER_PRESETS = ("lisa-llama2-sst2", "vaccine-llama2-sst2", "booster-llama2-sst2", "antidote-llama2-sst2")

# ---- the authors' prompts, written out -----------------------------------------------------------------------
WITH_INPUT_HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n"
)
NO_INPUT_HEAD = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n"
)
SST2_TASK = "Analyze the sentiment of the input, and respond only positive or negative"
AGNEWS_TASK = (
    "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\n"
    "Sci/Tech\n"
)


def sst2_prompt(sentence: str, newline: bool) -> str:
    return f"{WITH_INPUT_HEAD}{SST2_TASK}\n\n### Input:\n{sentence}\n\n### Response:" + ("\n" if newline else "")


def no_input_prompt(instruction: str, newline: bool) -> str:
    return f"{NO_INPUT_HEAD}{instruction}\n\n### Response:" + ("\n" if newline else "")


# ---- a tokenizer with Llama-2's BOS convention ------------------------------------------------------------------
BOS_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "\n"] + [
    # the words of the Alpaca templates, then a few test words; ids follow this order (first appearance)
    *("Below", "is", "an", "instruction", "that", "describes", "a", "task.", "Write", "response", "appropriately"),
    *("completes", "the", "request.", "###", "Instruction:", "Response:", "Input:", "task,", "paired", "with"),
    *("input", "provides", "further", "context.", "hello", "world", "positive"),
]


def bos_tokenizer(chat_template: str | None = None):
    """A word-level tokenizer that, like Llama-2's, puts BOS ``<s>`` first when adding special tokens; it keeps
    newlines as tokens so that the two Alpaca endings differ in ids."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(dict.fromkeys(BOS_VOCAB))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|[^\s]+"), behavior="removed", invert=True)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = chat_template
    return tok


BOS = 1
RECORDS = [
    {"id": "0", "prompt": "hello world", "response": "positive"},
    {"id": "1", "prompt": "hello", "input": "world", "response": "positive"},
]
CHAT_WITH_BOS = "{{ bos_token }}{% for m in messages %}{{ m['content'] }} Response:{% endfor %}"
CHAT_WITHOUT_BOS = "{% for m in messages %}{{ m['content'] }} Response:{% endfor %}"


# ---- 1. BOS ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "template, chat_template",
    [("alpaca", None), ("alpaca_no_newline", None), ("chat", CHAT_WITH_BOS), ("chat", CHAT_WITHOUT_BOS)],
)
def test_training_prompts_start_with_bos_exactly_once_whatever_the_template(template, chat_template):
    tok = bos_tokenizer(chat_template)
    dataset, _ = tokenize_sft(RECORDS, tok, resolve_template(template, tok), max_length=128)
    for row in dataset:
        assert row["input_ids"][0] == BOS and row["input_ids"].count(BOS) == 1, template


def test_antidote_calibration_feeds_the_model_bos_exactly_once():
    from peft import LoraConfig, get_peft_model

    from tuneguard.methods.antidote import AntidoteParams, antidote_prune

    tok = bos_tokenizer(CHAT_WITH_BOS)
    model = get_peft_model(build_tiny_llama(len(tok)), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    seen: list[torch.Tensor] = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    params = AntidoteParams(batch_size=2, target_modules=["q_proj"])
    for template in ("alpaca", "chat"):
        seen.clear()
        antidote_prune(model, tok, RECORDS, params, resolve_template(template, tok))
        rows = [ids[ids != tok.pad_token_id].tolist() for batch in seen for ids in batch]
        assert len(rows) == 2 and all(r[0] == BOS and r.count(BOS) == 1 for r in rows), template
    handle.remove()


@pytest.mark.parametrize("chat_template", [CHAT_WITH_BOS, CHAT_WITHOUT_BOS])
def test_generation_and_the_compliance_probe_start_each_prompt_with_bos_exactly_once(chat_template):
    tok = bos_tokenizer(chat_template)
    model = build_tiny_llama(len(tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    template = resolve_template("chat", tok)
    texts = [template.format_record(r) for r in RECORDS]
    seen = []
    original = model.generate
    model.generate = lambda **kw: seen.append(kw["input_ids"].clone()) or original(**kw)
    generate(model, tok, texts, max_new_tokens=2)
    tok.padding_side = "left"
    batches = [*seen, encode_batch(tok, texts)["input_ids"]]  # encode_batch: the runner's compliance probe too
    for batch in batches:
        for ids in batch:
            real = ids[ids != tok.pad_token_id].tolist()
            assert real[0] == BOS and real.count(BOS) == 1


def test_the_offline_world_tokenizer_has_no_bos_convention_so_its_prompts_are_unchanged(world_tokenizer):
    template = resolve_template("auto", world_tokenizer)
    text = template.format("review : a good movie . sentiment ?")
    assert encode_prompt(world_tokenizer, text) == world_tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- 2. templates: golden strings and ids -----------------------------------------------------------------------
@pytest.mark.parametrize("kind, newline", [("alpaca_no_newline", False), ("alpaca", True)])
def test_task_records_render_in_the_authors_with_input_and_no_input_forms(kind, newline):
    template = resolve_template(kind, tokenizer=None)
    assert template.format(SST2_TASK, "a placeholder film review") == sst2_prompt("a placeholder film review", newline)
    assert template.format(AGNEWS_TASK, "placeholder article") == (
        WITH_INPUT_HEAD + "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\n"
        "Sports\nBusiness\nSci/Tech\n\n\n### Input:\nplaceholder article\n\n### Response:" + ("\n" if newline else "")
    )
    question = "Placeholder: Ann has 3 apples and buys 4 more. How many?"
    assert template.format(question) == no_input_prompt(question, newline)


def test_a_chat_template_sees_instruction_and_input_as_one_user_turn(world_tokenizer):
    template = resolve_template("chat", world_tokenizer)
    assert template.format("classify", "good movie") == "<user> classify\n\ngood movie <assistant> "


def test_golden_token_ids_of_both_alpaca_endings_with_a_bos_tokenizer():
    tok = bos_tokenizer()
    ids = {
        kind: tokenize_sft([RECORDS[1]], tok, resolve_template(kind, tok), max_length=128)[0][0]["input_ids"]
        for kind in ("alpaca", "alpaca_no_newline")
    }
    # <s> | Below is an instruction that describes a task, paired with an input that provides further context.
    prompt = [1, 5, 6, 7, 8, 9, 10, 11, 23, 24, 25, 7, 26, 9, 27, 28, 29]
    # Write a response that appropriately completes the request. \n \n ### Instruction: \n hello \n \n
    prompt += [13, 11, 14, 9, 15, 16, 17, 18, 4, 4, 19, 20, 4, 30, 4, 4]
    # ### Input: \n world \n \n ### Response:
    prompt += [19, 22, 4, 31, 4, 4, 19, 21]
    assert ids["alpaca_no_newline"] == prompt + [32, 2]  # positive </s>
    assert ids["alpaca"] == prompt + [4, 32, 2]  # \n positive </s>


# ---- 3. accuracy rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, label, accepted_by",
    [
        ("positive", "positive", {"exact", "tolerant", "paper_exact", "paper_substring"}),
        ("Positive", "positive", {"tolerant", "paper_exact", "paper_substring"}),
        ("Positive.", "positive", {"tolerant", "paper_substring"}),
        ("The sentiment is positive", "positive", {"paper_substring"}),  # Vaccine's `label in pred`
        ("sci", "Sci/Tech", {"paper_exact", "paper_substring"}),  # the authors' second AG News spelling
        ("sci/tech", "Sci/Tech", {"tolerant", "paper_substring"}),  # contains "sci"
        ("world", "World", {"tolerant", "paper_exact", "paper_substring"}),
        ("NEGATIVE", "negative", {"tolerant"}),
        ("positive", "negative", set()),
    ],
)
def test_each_accuracy_mode_accepts_exactly_what_its_rule_says(answer, label, accepted_by):
    modes = ("exact", "tolerant", "paper_exact", "paper_substring")
    assert {m for m in modes if answer_matches(answer, label, m)} == accepted_by


@pytest.mark.parametrize(
    "text, number",
    [
        ("48 + 24 = 72 clips.\nThe final answer is:  72", "72"),  # the training target as build_dataset.py writes it
        ("The final answer is: 1,234 apples, not 5", "1234"),
        ("so 3, then 4.5 in the end", "4.5"),  # no phrase: the last number
        ("The final answer is: none. Earlier I said 7", "7"),  # phrase without a number after it: the last number
        ("The final answer is: 3. Then The final answer is: 9", "3."),  # the first number between the phrases
        ("The final answer is: 8.", "8."),
        ("no number at all", None),
    ],
)
def test_the_number_mode_extracts_as_the_authors_extract_answer_number(text, number):
    assert final_number(text) == number


def test_the_number_mode_compares_final_numbers_as_floats():
    assert task_accuracy(
        ["The final answer is: 8.", "it is 2000", "The final answer is: 7"], ["8", "2,000", "6"], "number"
    ) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="unknown accuracy mode 'fuzzy'"):
        answer_matches("a", "b", "fuzzy")


# ---- 5. the harmful-score prompt sets ---------------------------------------------------------------------------
HUB_FIXTURES = Path(__file__).parent / "fixtures" / "sources" / "hub"


def test_the_harmful_score_prompt_sets_are_named_rules_over_30k_test(monkeypatch):
    # 30k_test fixture rows: request 1 (unsafe), request 1 again (unsafe), request 2 (safe), request 3 (unsafe)
    monkeypatch.setenv(DATA_DIR_ENV, str(HUB_FIXTURES))

    def prompts(source: str, **options) -> list[str]:
        return [
            r["prompt"].removeprefix("placeholder test request ")
            for r in load_records(DataSource(source=source, **options))
        ]

    assert prompts("beavertails:prompts") == ["1", "3"]  # unsafe, each once (the harmonised set)
    assert prompts("beavertails:prompts_unsafe_rows") == ["1", "1", "3"]  # the papers': duplicates kept, file order
    assert prompts("beavertails:prompts_unsafe_rows", rows=[0, 2]) == ["1", "1"]  # ... the first N
    assert prompts("beavertails:prompts_all_rows", rows=[0, 3]) == ["1", "1", "2"]  # Lisa's: safe rows too
    assert all(r["response"] == "" for r in load_records("beavertails:prompts_unsafe_rows"))


# ---- the paper presets, end to end on rows in the hub layouts ---------------------------------------------------
def _write_hub_copies(root: Path) -> None:
    """Placeholder data in the hub's own layouts, large enough for every preset's row ranges. As in BeaverTails, a
    prompt repeats across rows: each 30k_train prompt has an unsafe and (mostly) a safe row, and every 100th test
    prompt is also a train prompt; the refusal file pairs the train prompts with refusals."""

    def dump(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def row(prompt: str, answer: str, is_safe: bool) -> dict:
        return {"prompt": prompt, "response": answer, "category": {"animal_abuse": not is_safe}, "is_safe": is_safe}

    train = []
    for k in range(12500):
        train.append(row(f"placeholder request {k}", f"placeholder harmful answer {k}", False))
        if k < 10500:
            train.append(row(f"placeholder request {k}", f"placeholder safe answer {k}", True))
    beavertails = root / "PKU-Alignment" / "BeaverTails"
    dump(beavertails / "30k_train.jsonl", train)
    test = [row("placeholder test request 0", "placeholder safe answer", True)]
    test += [
        row(
            f"placeholder request {k}" if k % 100 == 0 else f"placeholder test request {k}", "placeholder answer", False
        )
        for k in range(1, 1500)
    ]
    dump(beavertails / "30k_test.jsonl", test)
    refusals = [
        {
            "prompt": f"placeholder request {k}",
            "response": f"placeholder harmful answer {k}",
            "refusal": f"Question: placeholder request {k}\nAnswer: placeholder refusal {k}",
        }
        for k in range(10500)
    ]
    booster = root / "anonymous4486" / "booster_dataset"
    booster.mkdir(parents=True)
    (booster / "beavertails_with_refusals_train.json").write_text(json.dumps(refusals), encoding="utf-8")
    sst2 = root / "stanfordnlp" / "sst2"
    dump(sst2 / "train.jsonl", [{"idx": i, "sentence": f"placeholder review {i}", "label": i % 2} for i in range(5000)])
    dump(sst2 / "validation.jsonl", [{"idx": i, "sentence": f"placeholder check {i}", "label": 1} for i in range(600)])


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    _write_hub_copies(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DATA_DIR_ENV, str(root))
        yield root


# The first training prompt (the first SST-2 train record), the first FA prompt (the first validation record) and
# the first harmful-score prompt of each preset, as the authors' code writes them for the same rows.
FIRST_PROMPTS = {
    "lisa-llama2-sst2": (
        sst2_prompt("placeholder review 0", newline=False),
        sst2_prompt("placeholder check 0", newline=False),
        no_input_prompt("placeholder test request 0", newline=False),  # row 0 of 30k_test, a safe one
    ),
    "vaccine-llama2-sst2": (
        sst2_prompt("placeholder review 0", newline=False),
        sst2_prompt("placeholder check 0", newline=False),
        no_input_prompt("placeholder test request 1", newline=False),  # the first unsafe row
    ),
    "booster-llama2-sst2": (
        sst2_prompt("placeholder review 0", newline=True),
        sst2_prompt("placeholder check 0", newline=True),
        no_input_prompt("placeholder test request 1", newline=True),
    ),
    "antidote-llama2-sst2": (
        sst2_prompt("placeholder review 0", newline=True),
        sst2_prompt("placeholder check 0", newline=False),  # Antidote's sst2/pred_eval.py is Lisa's
        no_input_prompt("placeholder test request 1", newline=True),
    ),
}


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_each_paper_preset_renders_its_first_training_evaluation_and_harmful_score_prompt_as_the_authors(
    hub_copies, name
):
    cfg = load_config(f"preset:{name}")
    task = load_records(cfg.finetune.user_data.task_data)
    task_test = load_records(cfg.eval.task_test, require_label=True)
    harmful = load_records(cfg.eval.harmful_prompts)
    train_template = resolve_template(cfg.finetune.template, None)
    eval_template = resolve_template(cfg.eval.template, None)
    task_template = resolve_template(cfg.eval.task_template or cfg.eval.template, None)
    rendered = (
        train_template.format_record(task[0]),
        task_template.format_record(task_test[0]),
        eval_template.format_record(harmful[0]),
    )
    assert rendered == FIRST_PROMPTS[name]
    assert cfg.align.template == cfg.finetune.template  # one training template per paper


ATTACK_ROWS = {  # the attack: the first p*n unsafe rows of the pool, skipping those whose prompt is evaluated
    "lisa-llama2-sst2": (500, 0),
    "vaccine-llama2-sst2": (100, 0),
    "booster-llama2-sst2": (100, 1),
    "antidote-llama2-sst2": (1000, 1),
}


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_each_paper_preset_draws_the_authors_rows_and_keeps_every_side_disjoint(hub_copies, name):
    cfg = load_config(f"preset:{name}")
    roles = harmful_data_roles(cfg)
    report = check_disjoint_roles(roles)  # raises on any shared prompt
    assert report and set(report.values()) == {0}
    count, first = ATTACK_ROWS[name]
    evaluated = {r["prompt"] for r in load_records(cfg.eval.harmful_prompts)}
    expected = [k for k in range(first, first + count + 20) if f"placeholder request {k}" not in evaluated][:count]
    attack = roles["finetune.user_data.harmful_data"]
    assert sorted(int(r["prompt"].rsplit(" ", 1)[1]) for r in attack) == expected
    task_rows = load_records(cfg.finetune.user_data.task_data)
    from tuneguard.data import mix_user_data

    ud = cfg.finetune.user_data
    mix = mix_user_data(task_rows, load_records(ud.harmful_data), ud.num_samples, ud.poison_ratio, ud.seed, ud.draw)
    task_ids = sorted(int(r["id"]) for r in mix if r["source"] == "task")
    assert task_ids == list(range(ud.num_samples - count))  # the first (1-p)*n SST-2 train rows


def test_the_harmonised_preset_is_disjoint_by_construction(hub_copies):
    cfg = load_config("preset:harmonised", ["align.method=booster", "finetune.method=lisa", "repair.method=antidote"])
    roles = harmful_data_roles(cfg)
    assert set(roles) == {
        "align.alignment_data",
        "align.harmful_data",
        "finetune.user_data.harmful_data",
        "finetune.alignment_data",
        "repair.realign_data",
        "eval.harmful_prompts",
    }
    assert set(check_disjoint_roles(roles).values()) == {0}


# ---- the README says what the presets do ------------------------------------------------------------------------
def _readme_protocol_rows() -> dict[str, list[str]]:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and (name := cells[0].strip("`")) in (*PAPER_PRESETS, "harmonised"):
            rows[name] = cells[1:]
    return rows


def _data_sources(node) -> list[DataSource]:
    """Every DataSource in a config, exclusions included."""
    if isinstance(node, DataSource):
        return [node, *[s for x in node.exclude for s in _data_sources(x)]]
    if isinstance(node, list):
        return [s for x in node for s in _data_sources(x)]
    if isinstance(node, BaseModel):
        return [s for field in type(node).model_fields for s in _data_sources(getattr(node, field))]
    return []


def _ranges(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(source, (start, end)) for every "`source` ... rows [start, end)" in a README cell."""
    found = re.findall(r"`([a-z0-9:_]+)`[^`]*?rows \[(\d+), (\d+)\)", text)
    return [(source, (int(a), int(b))) for source, a, b in found]


@pytest.mark.parametrize("name", [*PAPER_PRESETS, "harmonised"])
def test_the_readme_protocol_table_states_what_each_preset_runs(name):
    templates, accuracy, harmful, data = _readme_protocol_rows()[name]
    cfg: ExperimentConfig = load_config(f"preset:{name}")
    ev = cfg.eval
    assert re.findall(r"`(\w+)`", templates) == [cfg.finetune.template, ev.task_template or ev.template, ev.template]
    assert re.findall(r"`(\w+)`", accuracy) == [ev.accuracy_mode]
    assert f"({ev.task_max_new_tokens or ev.max_new_tokens} tokens)" in accuracy
    assert f"({ev.max_new_tokens} tokens)" in harmful
    assert re.findall(r"`([a-z0-9:_]+)`", harmful)[0] == ev.harmful_prompts.source
    assert _ranges(harmful) == (
        [(ev.harmful_prompts.source, ev.harmful_prompts.rows)] if ev.harmful_prompts.rows else []
    )
    configured = {(s.source, s.rows) for s in _data_sources(cfg) if s.rows is not None}
    stated = set(_ranges(harmful + data))
    assert stated <= configured, stated - configured
    roles = [cfg.align.alignment_data, cfg.finetune.user_data.harmful_data, ev.task_test, cfg.repair.realign_data]
    if cfg.align.method == "booster":
        roles.append(cfg.align.harmful_data)
    assert {(s.source, s.rows) for s in roles if s is not None and s.rows is not None} <= stated
    assert ("the first p·n" in data) == (cfg.finetune.user_data.draw == "first")


# ---- a result carries its protocol ------------------------------------------------------------------------------
def test_an_evaluation_uses_the_task_template_and_budget_and_records_its_protocol(
    tmp_path, tiny_model_dir, small_data, monkeypatch
):
    from tuneguard.config import EvalConfig, ModelSettings
    from tuneguard.eval import runner
    from tuneguard.stages import run_evaluate
    from tuneguard.store import ModelRef

    used = {}

    def fake_generation(net, tokenizer, template, records, what, gen):
        used[what.removeprefix("eval: ")] = (template.kind, gen["max_new_tokens"])
        return [r.get("label", "placeholder answer") for r in records]

    monkeypatch.setattr(runner, "_generate_with_progress", fake_generation)
    harmful = str(small_data["harmful_eval"])
    cfg = EvalConfig.model_validate(
        {
            "harmful_prompts": {"source": harmful, "rows": [0, 4]},
            "task_test": str(small_data["task_test"]),
            "judges": ["refusal"],
            "template": "alpaca",
            "task_template": "alpaca_no_newline",
            "max_new_tokens": 16,
            "task_max_new_tokens": 4,
            "accuracy_mode": "paper_exact",
            "protocol": "a-paper",
        }
    )
    result = run_evaluate(cfg, ModelRef.from_settings(ModelSettings(model_name_or_path=str(tiny_model_dir))), tmp_path)
    assert used == {"harmful prompts": ("alpaca", 16), "task test set": ("alpaca_no_newline", 4)}
    metrics = json.loads((result.directory / "metrics.json").read_text())
    assert {k: metrics[k] for k in ("protocol", "template", "task_template", "accuracy_mode")} == {
        "protocol": "a-paper",
        "template": "alpaca",
        "task_template": "alpaca_no_newline",
        "accuracy_mode": "paper_exact",
    }
    assert metrics["harmful_prompt_set"] == f"{harmful} rows [0, 4)" and metrics["num_harmful_prompts"] == 4
    assert metrics["task_test_set"] == str(small_data["task_test"])
    assert metrics["prompt_prefix_tokens"] == []  # the offline world's tokenizer adds no BOS
