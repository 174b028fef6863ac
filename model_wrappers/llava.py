"""`amps_llava`: LLaVA-1.5 (llava-hf format); the class is made in `registered` from its family adapter."""

from amps_eval.model_wrappers.registered import AmpsLlava  # noqa: F401
