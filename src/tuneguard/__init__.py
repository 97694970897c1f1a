"""tuneguard: defenses, attack and evaluation for harmful fine-tuning of safety-aligned language models.

Stages: align (provider's safety data) -> finetune (user data, a fraction of it harmful) -> repair -> evaluate.
See README.md for the tour and docs/architecture.md for the layers.
"""

__version__ = "0.1.0"
