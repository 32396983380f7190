"""Structured pruning: `geometry` (sizes and where each architecture keeps its matrices), `surgery`
(cutting a loaded model down to kept indices), `importance` (scores), `plan` (the typed request and
which units stay) and `runner` (model in, smaller dense artifact out).

The package is also the API's verb: `compress.prune(model, out, mlp=0.3)` calls `runner.prune`.
"""

from compress.callable_module import make_callable

make_callable(__name__, "compress.prune.runner:prune")
