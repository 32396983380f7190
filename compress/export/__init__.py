"""Export to other runtimes' formats: GGUF for llama.cpp (`compress export gguf`).

`blocks` turns our integer grids into GGML blocks bit for bit, `vocab` the tokenizer into llama.cpp's
vocabulary, `writer` the model into a GGUF, `runner` all of it into an artifact directory.
"""
