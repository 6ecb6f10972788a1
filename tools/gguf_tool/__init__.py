"""gguf-tool: llama.cpp conversion and quantization, each output validated against the HF model."""
