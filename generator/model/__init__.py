"""Model stage: fetch a Hugging Face model, make the tiny test model, quantize with ModelOpt, measure quality."""
