"""tuneguard: defenses, attack and evaluation for harmful fine-tuning of safety-aligned language models.

Stages: align (provider's safety data) -> finetune (user data, a fraction of it harmful) -> repair -> evaluate.
See DESIGN.md for the architecture and README.md for the tour.
"""

__version__ = "0.1.0"
