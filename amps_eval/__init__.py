"""amps-eval: modality-preference tasks (MC2) and steered MLLM wrappers for lmms-eval."""

__version__ = "0.1.0"
