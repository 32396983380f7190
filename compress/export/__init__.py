"""Export to other runtimes' formats. `blocks`: our integer grids as GGML quantization blocks, bit
for bit, so a GPTQ/AWQ/RTN artifact whose grid matches a GGML type reaches llama.cpp without being
rounded a second time (issue 16; the GGUF writer and llama.cpp runtime come next)."""
