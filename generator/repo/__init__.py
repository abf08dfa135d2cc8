"""Repository stage: render the Triton model repository (engine or LLM-API target) and validate it."""
