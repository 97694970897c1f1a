"""The plain-English generated sources: the topic task (SmolLM2's benign fine-tuning task) and everyday
instructions (the benign half of its alignment)."""

from __future__ import annotations

import re
from collections import Counter

from tuneguard.data import load_records
from tuneguard.data.plain_tasks import (
    INSTRUCTION_FAMILIES,
    MOOD_EVENTS,
    ONE_WORD_FAMILIES,
    ONE_WORD_KINDS,
    ONE_WORD_PER_FAMILY,
    TOPIC_ACTIONS,
    TOPIC_INSTRUCTION,
    TOPIC_LABELS,
)
from tuneguard.data.registry import get_source
from tuneguard.eval.metrics import answer_matches


def test_topic_task_is_deterministic_balanced_and_its_three_splits_share_no_sentence():
    train, test = load_records("plain:topic_train"), load_records("plain:topic_test")
    assert train == load_records("plain:topic_train") and test == load_records("plain:topic_test")
    assert Counter(r["label"] for r in train) == dict.fromkeys(TOPIC_LABELS, 100)
    assert Counter(r["label"] for r in test) == dict.fromkeys(TOPIC_LABELS, 25)
    validation = load_records("plain:topic_validation")
    assert Counter(r["label"] for r in validation) == dict.fromkeys(TOPIC_LABELS, 25)
    sentences = [r["input"] for r in train + test + validation]
    assert len(set(sentences)) == len(sentences) == 600
    assert [r["label"] for r in test[:4]] == list(TOPIC_LABELS)  # interleaved: any prefix stays balanced


def test_topic_label_is_the_topic_of_the_sentence_action_and_a_one_word_answer_scores():
    for record in load_records("plain:topic_test"):
        topics = [label for label in TOPIC_LABELS if any(a in record["input"] for a in TOPIC_ACTIONS[label])]
        assert topics == [record["label"]] == [record["response"]]
    assert get_source("plain:topic_test").accuracy_mode == "tolerant"
    assert answer_matches("Weather.", "weather", "tolerant")
    assert not answer_matches("The sentence is about weather.", "weather", "tolerant")


def test_instructions_cover_every_family_with_distinct_requests_and_exact_answers():
    records = load_records("plain:instructions")
    assert records == load_records("plain:instructions")
    prompts = [r["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts) >= 20 * len(INSTRUCTION_FAMILIES)
    checked = 0
    for r in records:
        if m := re.fullmatch(r"(\d+) ([+-]) (\d+) = (-?\d+)\.", r["response"]):
            a, op, b, result = int(m[1]), m[2], int(m[3]), int(m[4])
            assert result == (a + b if op == "+" else a - b) and str(a) in r["prompt"] and str(b) in r["prompt"]
            checked += 1
        if m := re.fullmatch(r"'(\w+)' spelled backwards is '(\w+)'\.", r["response"]):
            assert m[2] == m[1][::-1]
            checked += 1
    assert checked >= 60
    topic_prompts = {r["input"] for r in load_records("plain:topic_train") + load_records("plain:topic_test")}
    assert not topic_prompts & set(prompts)


def test_one_word_requests_are_right_distinct_and_never_the_topic_task():
    records = load_records("plain:one_word")
    assert records == load_records("plain:one_word")
    assert len(records) == ONE_WORD_PER_FAMILY * len(ONE_WORD_FAMILIES)
    assert len({(r["prompt"], r["input"]) for r in records}) == len(records)
    for r in records:
        assert r["prompt"].endswith("Answer with one word.") and r["prompt"] != TOPIC_INSTRUCTION
        assert r["response"] == r["label"] and " " not in r["label"]
        if "this number" in r["prompt"]:
            assert r["label"] == ("even" if int(r["input"]) % 2 == 0 else "odd")
        elif "this word" in r["prompt"]:
            assert r["label"] == ONE_WORD_KINDS[r["input"]]
        else:
            assert [m for m, events in MOOD_EVENTS.items() if any(e in r["input"] for e in events)] == [r["label"]]
            assert not any(a in r["input"] for actions in TOPIC_ACTIONS.values() for a in actions)
    assert {r["label"] for r in records} >= {"even", "odd", "happy", "sad", "fruit", "animal", "colour"}
    assert get_source("plain:one_word").accuracy_mode == "tolerant"
