"""Reading sources (local folders, GGUF files, Hub repos) and writing sharded safetensors atomically."""
