"""Word-level tokenizer for the synthetic world (closed vocabulary, whitespace split, chat template)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tuneguard.world.generator import ASSISTANT, EOS, PAD, SPECIAL_TOKENS, UNK, USER, all_words

#: Chat template: ``<user> {prompt} <assistant> {answer} <eos>``; EOS ends an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + " {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + " {{ message['content'] }} " + EOS + " "
    "{% else %}{{ message['content'] }} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + " {% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the world's word-level tokenizer: special tokens first, then every vocabulary word.

    Text is split on whitespace only, so decoding joins tokens with single spaces and every world text
    (which writes punctuation as separate words) round-trips exactly.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + all_words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        clean_up_tokenization_spaces=False,
        model_max_length=128,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok
