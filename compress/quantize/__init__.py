"""Weight quantization: `config` (the typed request), one module per method family, `runner`
(model or artifact in, artifact out). Imports stay light so the CLI starts fast.

The package is also the API's verb: `compress.quantize(model, out, method=...)` calls
`runner.quantize`.
"""

from compress.callable_module import make_callable

make_callable(__name__, "compress.quantize.runner:quantize")
