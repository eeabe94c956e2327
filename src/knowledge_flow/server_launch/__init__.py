"""Start model servers: the embedded CPU server (llama.cpp + a packaged GGUF model)."""
