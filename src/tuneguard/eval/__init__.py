"""Evaluation: batched generation, harm judges, task metrics."""

from tuneguard.eval.beaverdam import BEAVERTAILS_CATEGORIES, BeaverDamJudge, BeaverDamSettings
from tuneguard.eval.generation import generate
from tuneguard.eval.judges import (
    JUDGES,
    REFUSAL_PHRASES,
    RefusalKeywordJudge,
    Verdict,
    get_judge,
    run_judges,
    validate_judge_args,
)
from tuneguard.eval.llamaguard import LlamaGuardJudge, LlamaGuardSettings, parse_llama_guard_output
from tuneguard.eval.metrics import (
    answer_matches,
    cohen_kappa,
    harmful_score,
    harmful_score_plus,
    is_degenerate,
    judge_agreement,
    task_accuracy,
)

__all__ = [
    "JUDGES",
    "BEAVERTAILS_CATEGORIES",
    "REFUSAL_PHRASES",
    "BeaverDamJudge",
    "BeaverDamSettings",
    "LlamaGuardJudge",
    "LlamaGuardSettings",
    "RefusalKeywordJudge",
    "Verdict",
    "answer_matches",
    "cohen_kappa",
    "generate",
    "get_judge",
    "harmful_score",
    "harmful_score_plus",
    "is_degenerate",
    "judge_agreement",
    "parse_llama_guard_output",
    "run_judges",
    "task_accuracy",
    "validate_judge_args",
]
