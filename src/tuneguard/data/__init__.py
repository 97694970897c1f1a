"""Data: readers, validation, named data sources, poison mixing, prompt templates, tokenization."""

from tuneguard.data.loading import load_records
from tuneguard.data.mixing import mix_user_data, write_jsonl
from tuneguard.data.readers import DataError, Record, read_file
from tuneguard.data.registry import SOURCES, Generated, Hub, Package, data_source, get_source, registered_sources
from tuneguard.data.templates import PromptTemplate, resolve_template
from tuneguard.data.tokenize import IGNORE_INDEX, SFTDataCollator, tokenize_sft

__all__ = [
    "DataError",
    "Generated",
    "IGNORE_INDEX",
    "PromptTemplate",
    "Hub",
    "Package",
    "Record",
    "SOURCES",
    "SFTDataCollator",
    "data_source",
    "get_source",
    "load_records",
    "mix_user_data",
    "read_file",
    "registered_sources",
    "resolve_template",
    "tokenize_sft",
    "write_jsonl",
]
