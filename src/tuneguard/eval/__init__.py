"""Evaluation: batched generation, harm judges, task metrics."""

from tuneguard.eval.generation import generate
from tuneguard.eval.judges import (
    REFUSAL_PHRASES,
    OfflineWorldJudge,
    RefusalKeywordJudge,
    get_judge,
    register_judge,
)
from tuneguard.eval.metrics import answer_matches, harmful_score, task_accuracy

__all__ = [
    "REFUSAL_PHRASES",
    "OfflineWorldJudge",
    "RefusalKeywordJudge",
    "answer_matches",
    "generate",
    "get_judge",
    "harmful_score",
    "register_judge",
    "task_accuracy",
]
