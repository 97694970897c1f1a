"""Data: readers, validation, poison mixing, prompt templates, tokenization."""

from tuneguard.data.mixing import mix_user_data, write_jsonl
from tuneguard.data.readers import DataError, Record, load_records, read_file, register_source
from tuneguard.data.templates import PromptTemplate, resolve_template
from tuneguard.data.tokenize import IGNORE_INDEX, SFTDataCollator, tokenize_sft

__all__ = [
    "DataError",
    "IGNORE_INDEX",
    "PromptTemplate",
    "Record",
    "SFTDataCollator",
    "load_records",
    "mix_user_data",
    "read_file",
    "register_source",
    "resolve_template",
    "tokenize_sft",
    "write_jsonl",
]
