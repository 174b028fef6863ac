"""`amps_qwen`: Qwen2.5-VL (any size); the class is made in `registered` from its family adapter."""

from amps_eval.model_wrappers.registered import AmpsQwen  # noqa: F401
