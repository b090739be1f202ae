"""GRPO post-training toolkit: the algorithm and the training side.

Importing `grpo` is cheap on purpose (no torch, no vLLM): config and CLI modules
must answer `grpo --help` instantly. Heavy modules are imported where used.
"""

__version__ = "0.1.0"
