"""hf-push-tool: publishes artifact sets to the Hugging Face Hub, an Ollama server or a local folder."""
