"""Chat completions in the API process: greedy, single-turn, with the training template; the few most recently
used models stay loaded, and one answer is generated at a time (the API's other requests go on meanwhile)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from tuneguard.serve.engine import ChatAnswer, chat_answer, free_memory, load_chat_model, model_key


class ChatModels:
    def __init__(self, template: str, max_loaded: int = 2) -> None:
        self.template, self.max_loaded = template, max_loaded
        self._loaded: OrderedDict[str, tuple[Any, Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def complete(self, model: dict[str, Any], prompt: str, max_new_tokens: int) -> ChatAnswer:
        with self._lock:
            key = model_key(model)
            if key in self._loaded:
                self._loaded.move_to_end(key)
            else:
                while len(self._loaded) >= self.max_loaded:
                    self._loaded.popitem(last=False)
                    free_memory()
                self._loaded[key] = load_chat_model(model, self.template)
            return chat_answer(self._loaded[key], prompt, max_new_tokens)

    def forget(self, model: dict[str, Any]) -> None:
        """Unload a model (one that was deleted)."""
        with self._lock:
            if self._loaded.pop(model_key(model), None) is not None:
                free_memory()
