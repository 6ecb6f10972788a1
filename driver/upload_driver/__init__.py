"""upload-driver: plans and runs the tools on a trainer's output folder."""
