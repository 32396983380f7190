"""The `compress` command line: parse, call the library, render. Nothing else lives here.

Errors a user can fix are one line on stderr and exit code 2 (`--debug` adds the traceback); an
unexpected failure is one line and exit code 3; a failed quality gate is exit code 1.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from enum import Enum
from pathlib import Path

import typer

from compress import console
from compress.errors import CompressError
from compress.quantize.config import METHOD_BITS
from compress.version import __version__

INTERNAL_ERROR_EXIT = 3
_invocation: list[str] = []  # the arguments of this run, recorded verbatim in manifests

app = typer.Typer(
    name="compress",
    help="Make causal language models cheaper to run, and prove what it cost in quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The method names come from the quantization config: one definition for CLI, recipes and manifest.
QuantMethod = Enum("QuantMethod", {name: name for name in METHOD_BITS}, type=str)


def _print_version(value: bool) -> None:
    if value:
        console.stdout.print(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Only results and errors; no progress or notices."
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Quantize, prune and distill Hugging Face causal LMs; every command writes a loadable artifact."""
    console.mode.quiet = quiet
    console.mode.json = json_output
    if quiet or json_output:  # read by huggingface_hub and transformers when they are imported
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    console.mode.debug = debug or console.mode.debug


def _command() -> str:
    return shlex.join(["compress", *_invocation])


def _emit_json(payload: object) -> None:
    console.stdout.print_json(json.dumps(payload, default=str))


@app.command(
    epilog="Examples:\n\n  compress quantize ./my-model --method fp16 --out out/fp16\n\n"
    "  compress quantize meta-llama/Llama-3.2-1B --bits 16 --method bf16",
)
def quantize(
    model: str = typer.Argument(..., help="A model directory, a hub id, or a compress artifact."),
    method: QuantMethod | None = typer.Option(None, "--method", "-m", help="Quantization method."),
    bits: int | None = typer.Option(
        None, "--bits", "-b", help="Bit width; chooses the method if none given."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory (default: compressed/<model>-<method>)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1, …"),
    force: bool = typer.Option(False, "--force", "-f", help="Replace --out if it exists."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Run the model repo's own code."
    ),
) -> None:
    """Quantize a model's weights and write an artifact."""
    from compress.artifact import describe
    from compress.quantize.runner import quantize as run_quantize
    from compress.render import inspect_view

    path = run_quantize(
        model,
        out,
        method=method.value if method else None,
        bits=bits,
        device=device,
        force=force,
        trust_remote_code=trust_remote_code,
        command=_command(),
    )
    if console.mode.json:
        _emit_json({"artifact": str(path), **describe(path)})
    elif not console.mode.quiet:
        console.stdout.print(inspect_view(describe(path)))
        console.stdout.print(f"[green]wrote[/green] {path}")
    else:
        console.stdout.print(str(path))


@app.command(epilog="Example:\n\n  compress inspect compressed/my-model-fp16 --json")
def inspect(
    artifact: Path = typer.Argument(..., help="An artifact or model directory."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout."),
) -> None:
    """Show an artifact's manifest, lineage, size, parameter count and bits per weight."""
    from compress.artifact import describe
    from compress.render import inspect_view

    info = describe(artifact)
    if json_output or console.mode.json:
        _emit_json(info)
    else:
        console.stdout.print(inspect_view(info))


@app.command(
    epilog="Examples:\n\n  compress data ../shared/data/tinystories/ --tokenizer ./my-model --samples 128\n\n"
    "  compress data hf:wikitext:wikitext-2-raw-v1:test --tokenizer gpt2 --sequential --seq-len 1024",
)
def data(
    source: str = typer.Argument(
        ..., help="A file, directory, hf:NAME[:CONFIG][:SPLIT] or builtin:python-stdlib."
    ),
    tokenizer: str = typer.Option(
        ..., "--tokenizer", "-t", help="Model directory or hub id with the tokenizer."
    ),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per window."),
    samples: int = typer.Option(128, "--samples", help="Windows to sample (calibration mode)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (calibration mode)."),
    sequential: bool = typer.Option(False, "--sequential", help="Windows in document order (eval mode)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Token budget in eval mode."),
) -> None:
    """Show exactly which tokens a data source yields, and their fingerprint."""
    from compress.data import sample_windows, sequential_windows
    from compress.modeling import load_tokenizer, resolve_model

    loaded = load_tokenizer(resolve_model(tokenizer))
    if sequential:
        windows = sequential_windows(loaded, source, seq_len, max_tokens)
    else:
        windows = sample_windows(loaded, source, samples, seq_len, seed)
    fingerprint = windows.fingerprint.as_dict()
    if console.mode.json:
        _emit_json(fingerprint)
        return
    preview = loaded.decode(windows.input_ids[0][:48])
    console.stdout.print(
        f"{fingerprint['samples']} windows × {fingerprint['seq_len']} tokens = "
        f"{fingerprint['tokens']:,} tokens from {source}\n"
        f"sha256 {fingerprint['sha256']}\nfirst window starts: {preview!r}"
    )


@app.command(epilog="Examples:\n\n  compress demo\n\n  compress demo --fast --out /tmp/demo")
def demo(
    fast: bool = typer.Option(False, "--fast", help="A smaller, quicker demo model (what the tests use)."),
    out: Path = typer.Option(Path("compressed/demo"), "--out", "-o", help="Where the demo's artifacts go."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Retrain the demo model even when it is cached."),
) -> None:
    """Build the trained demo model offline, then quantize and inspect it."""
    from compress.artifact import describe
    from compress.demo import demo_model
    from compress.quantize.runner import quantize as run_quantize
    from compress.render import inspect_view

    model_dir, record = demo_model(fast=fast, rebuild=rebuild)
    artifact = run_quantize(model_dir, out / "fp16", method="fp16", force=True, command=_command())
    if console.mode.json:
        _emit_json({"model": str(model_dir), "record": record, "artifact": describe(artifact)})
        return
    console.stdout.print(
        f"demo model: {model_dir}\n"
        f"  {record['parameters']:,} parameters, vocabulary {record['vocab_size']}, "
        f"trained {record['recipe']['steps']} steps on {record['train_data']['tokens']:,} tokens\n"
        f"  held-out perplexity: [bold]{record['heldout_ppl']:.2f}[/bold] "
        f"(on {record['heldout_data']['tokens']:,} tokens of builtin:python-stdlib:heldout; "
        f"a model that learned nothing scores about {record['vocab_size']})"
    )
    console.stdout.print(inspect_view(describe(artifact)))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every failure into one line and an exit code."""
    console.mode.debug = bool(os.environ.get("COMPRESS_DEBUG"))
    _invocation[:] = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="compress", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        console.stderr.print("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        message = exc.format_message()
        if message:  # no arguments at all: the help was already shown
            _print_error(message, exc)
        return 2
    except CompressError as exc:
        _print_error(str(exc), exc)
        return exc.exit_code
    except Exception as exc:
        _print_error(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", exc
        )
        return INTERNAL_ERROR_EXIT


def _print_error(message: str, exc: BaseException) -> None:
    if console.mode.debug:
        traceback.print_exception(exc, file=sys.stderr)
    one_line = " ".join(message.split())
    print(f"error: {one_line}", file=sys.stderr)


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())
