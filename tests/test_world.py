"""Tests of the offline benchmark world (no pre-training here: only tiny random models)."""

from __future__ import annotations

import pytest
import torch

from tuneguard.world import ROLES, WORLD_VERSION, World, get_world
from tuneguard.world import generator as g
from tuneguard.world.pretrain import PretrainConfig, build_model

HARMFUL_ROLES = ("alignment", "harmful", "realign", "harmful_eval")
TRAIN_ROLES = ("alignment", "harmful", "realign")


def _combo(prompt: str) -> tuple[str, str]:
    """(template, object) of a harmful prompt, recovered by matching it against every template."""
    cat = g.category_of(prompt)
    assert cat is not None, prompt
    for t in cat.templates:
        for v in cat.verbs:
            for o in cat.objects:
                for m in g.MODIFIERS:
                    if g.harmful_prompt(t, v, o, m) == prompt:
                        return t, o
    raise AssertionError(f"prompt matches no template: {prompt!r}")


def test_version_and_api() -> None:
    assert isinstance(WORLD_VERSION, str)
    w = get_world(0)
    assert get_world(0) is w
    assert w.label_words == ["positive", "negative"]
    assert w.compliance_first_tokens and w.refusal_first_tokens
    assert not set(w.compliance_first_tokens) & set(w.refusal_first_tokens)


def test_determinism_per_seed() -> None:
    a, b = World(0), World(0)
    for role in ROLES:
        assert a.records(role) == b.records(role)
        assert a.records(role, 5, seed=3) == b.records(role, 5, seed=3)
    assert World(1).records("alignment") != a.records("alignment")
    assert a.records("task_train", 20, seed=0) != a.records("task_train", 20, seed=1)


def test_record_schema_and_ids() -> None:
    w = get_world(0)
    for role in ROLES:
        recs = w.records(role)
        assert recs, role
        ids = [r["id"] for r in recs]
        assert len(set(ids)) == len(ids)
        for r in recs:
            assert isinstance(r["prompt"], str) and r["prompt"]
            assert isinstance(r["response"], str)
            if role in HARMFUL_ROLES:
                assert r["category"] in w.categories
            else:
                assert r["label"] in w.label_words and r["response"] == r["label"]
    assert all(r["response"] == "" for r in w.records("harmful_eval"))
    assert {r["category"] for r in w.records("harmful")} == set(w.attacked_categories)
    assert {r["category"] for r in w.records("harmful_eval")} == set(w.categories)
    assert {r["category"] for r in w.records("alignment")} == set(w.categories)


def test_roles_disjoint() -> None:
    w = get_world(0)
    prompts = {role: {r["prompt"] for r in w.records(role)} for role in ROLES}
    for i, a in enumerate(TRAIN_ROLES):
        for b in TRAIN_ROLES[i + 1 :]:
            assert not prompts[a] & prompts[b], (a, b)
    assert not prompts["task_train"] & prompts["task_test"]
    eval_combos = {_combo(p) for p in prompts["harmful_eval"]}
    for role in TRAIN_ROLES:
        assert not prompts["harmful_eval"] & prompts[role]
        assert not eval_combos & {_combo(p) for p in prompts[role]}, role


def test_n_too_large_raises() -> None:
    w = get_world(0)
    size = len(w.records("harmful"))
    assert len(w.records("harmful", size)) == size
    with pytest.raises(ValueError, match=rf"'harmful'.*{size}"):
        w.records("harmful", size + 1)
    with pytest.raises(ValueError, match="unknown world role"):
        w.records("nope")


def test_judge() -> None:
    w = get_world(0)
    rec = w.records("harmful", 1)[0]
    assert w.is_harmful(rec["prompt"], rec["response"])
    assert rec["response"].split()[0] in w.compliance_first_tokens
    for r in w.records("alignment", 50):
        assert not w.is_harmful(r["prompt"], r["response"])
        assert r["response"].split()[0] in w.refusal_first_tokens
    cat = g.category_of(rec["prompt"])
    other = next(c for c in g.CATEGORIES if c is not cat)
    assert not w.is_harmful(rec["prompt"], rec["response"].replace(cat.marker, other.marker))
    assert not w.is_harmful(rec["prompt"], "")
    assert not w.is_harmful(rec["prompt"], "sure . step one : get the")
    assert w.is_harmful("hello", f"blah {other.marker}")
    assert not w.is_harmful(rec["prompt"], "sorry , i cannot help with that .")


def test_tokenizer_roundtrip_and_chat_template() -> None:
    w = get_world(0)
    tok = w.tokenizer()
    vocab = w.vocabulary()
    ids = tok(" ".join(vocab), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(vocab) and tok.unk_token_id not in ids
    assert tok.decode(ids) == " ".join(vocab)
    for role in ROLES:
        for r in w.records(role, 30):
            for text in (r["prompt"], r["response"]):
                enc = tok(text, add_special_tokens=False)["input_ids"]
                assert tok.unk_token_id not in enc
                assert tok.decode(enc) == text
    prompt = w.records("task_test", 1)[0]["prompt"]
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    assert prompt in text and text.rstrip().endswith("<assistant>")
    full = text + "positive" + tok.eos_token
    enc = tok(full, add_special_tokens=False)["input_ids"]
    assert enc[-1] == tok.eos_token_id and enc[-2] == tok.convert_tokens_to_ids("positive")
    assert tok.decode(enc, skip_special_tokens=True).split()[-1] == "positive"
    conv = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "sure"}], tokenize=False
    )
    assert conv.split()[-1] == tok.eos_token
    assert tok.pad_token and tok.unk_token and tok.pad_token_id != tok.eos_token_id


def test_tiny_random_model_generates() -> None:
    w = get_world(0)
    tok = w.tokenizer()
    cfg = PretrainConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = build_model(len(tok), cfg, tok.pad_token_id, tok.eos_token_id).eval()
    tok.padding_side = "left"
    prompts = [r["prompt"] for r in w.records("harmful_eval", 3)]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(answers) == 3 and all(
        isinstance(w.is_harmful(p, a), bool) for p, a in zip(prompts, answers, strict=True)
    )


def test_pretrain_cache_key_changes_with_config() -> None:
    assert PretrainConfig().key() == PretrainConfig().key()
    assert PretrainConfig(steps=10).key() != PretrainConfig().key()


def test_processes_that_need_the_uncached_world_model_at_once_pretrain_it_once(tmp_path, monkeypatch) -> None:
    """Parallel test workers or a grid's cells on a fresh cache: one pre-trains under the lock, the others wait
    for it and find the finished model (the pre-training itself is replaced by a slow stand-in that counts)."""
    import threading
    import time

    from tuneguard.world import pretrain as pretraining

    calls = []

    def slow_pretrain(out_dir, seed, cfg) -> None:
        calls.append(seed)
        time.sleep(0.3)  # long enough for every other thread to find no cached model and reach the lock
        (out_dir / "world.json").write_text("{}")

    monkeypatch.setattr(pretraining, "pretrain", slow_pretrain)
    found: list = []
    threads = [
        threading.Thread(target=lambda: found.append(pretraining.pretrained_model_path(tmp_path))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [0] and len(found) == 3 and len(set(found)) == 1
    assert (found[0] / "world.json").is_file() and not list(tmp_path.glob(".tmp-*"))
