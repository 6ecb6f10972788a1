"""docs-tool: model cards, upload manifest, README and Ollama Modelfile for a run's artifacts."""
