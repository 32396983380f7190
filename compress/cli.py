"""The `compress` command line: parse, call the library, render. Nothing else lives here.

Errors a user can fix are one line on stderr and exit code 2 (`--debug` adds the traceback); an
unexpected failure is one line and exit code 3; a failed quality gate is exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import traceback
import warnings
from inspect import Parameter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from compress import console
from compress.cli_options import config_parameters, option, with_parameters
from compress.distill.config import DistillConfig, GenerateConfig, TrainConfig
from compress.errors import CompressError, option_error, user_error_message
from compress.version import __version__

if TYPE_CHECKING:
    from compress.evaluate.results import EvalReport
    from compress.pipeline.report import RunResult

INTERNAL_ERROR_EXIT = 3
_invocation: list[str] = []  # the arguments of this run, recorded verbatim in manifests
#: The commands built from registered techniques, by name, with the technique each was built for.
_generated: dict[str, tuple[Any, Any]] = {}

app = typer.Typer(
    name="compress",
    help="Make causal language models cheaper to run, and prove what it cost in quality.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
    verbose: bool = typer.Option(
        False, "--verbose", help="Also show third-party progress bars, load reports and warnings."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Quantize, prune and distill Hugging Face causal LMs; every command writes a loadable artifact."""
    console.mode.quiet = quiet
    console.mode.json = json_output
    if not verbose:
        _silence_libraries()
    console.mode.debug = debug or console.mode.debug


def _silence_libraries() -> None:
    """Third-party progress bars, load reports and warnings off: compress shows one progress display
    of its own, and a failing command's `error:` line is the only line on stderr.

    Environment variables reach libraries imported later (huggingface_hub, datasets, tqdm users
    such as lm-eval); `logging.disable` quiets every library logger below ERROR (transformers'
    load reports, torch's and torchao's import notices); Python warnings are ignored.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    _disable_tqdm()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _disable_tqdm() -> None:
    """Every tqdm bar off, including those created with an explicit `disable=False`.

    TQDM_DISABLE only changes tqdm's default, and lm-eval passes `disable=` itself ("Tokenizing
    inputs", "Running loglikelihood requests"), so the default never applies there; tqdm has no
    other switch, hence the wrapper. Subclasses (tqdm.auto, tqdm.asyncio) go through it too.
    """
    import tqdm

    if getattr(tqdm.tqdm.__init__, "_compress_silenced", False):
        return
    original = tqdm.tqdm.__init__

    def silenced(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    silenced._compress_silenced = True  # type: ignore[attr-defined]
    tqdm.tqdm.__init__ = silenced


def _command() -> str:
    return shlex.join(["compress", *_invocation])


def _sync_technique_commands() -> None:
    """A command for every registered technique that asks for one (`compress.cli_options`), first
    in the help; a technique registered since the last call gets its command, one removed loses it."""
    from compress.cli_options import technique_command
    from compress.technique import techniques

    registered = {name: t for name, t in techniques().items() if t.command}
    for name, (technique, info) in list(_generated.items()):
        if registered.get(name) is not technique:
            app.registered_commands.remove(info)
            del _generated[name]
    for name, technique in registered.items():
        if name not in _generated:
            app.command(name, help=technique.help, epilog=technique.epilog or None)(
                technique_command(technique, _command)
            )
            info = app.registered_commands.pop()
            app.registered_commands.insert(len(_generated), info)
            _generated[name] = (technique, info)


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
        console.emit_json(info)
    else:
        console.stdout.print(inspect_view(info))


@app.command(
    "eval",
    epilog="Examples:\n\n  compress eval out/a out/b --baseline ./my-model --json results.json\n\n"
    "  compress eval out/int4 --baseline ./my-model --suite quick --gate 'kld.mean<=0.05' --junit eval.xml",
)
def eval_command(
    artifacts: list[str] = typer.Argument(..., help="Artifacts, model directories or hub ids to score."),
    baseline: str | None = typer.Option(
        None, "--baseline", help="The reference model (default: the lineage's source)."
    ),
    suite: str = typer.Option("default", "--suite", help="A suite name in evals/ or a YAML path."),
    data: str | None = typer.Option(None, "--data", help="Override the suite's eval text (any data source)."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Override the suite's window length."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Override the suite's token budget."),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Comma-separated: ppl,kld,tasks,speed,memory,size,cost."
    ),
    tasks: str | None = typer.Option(
        None, "--tasks", help="Comma-separated lm-eval task names (local or online)."
    ),
    gate: list[str] = typer.Option([], "--gate", help="A quality gate, e.g. 'kld.mean<=0.05' (repeatable)."),
    json_file: Path | None = typer.Option(None, "--json", help="Write the report as JSON to this file."),
    junit: Path | None = typer.Option(
        None, "--junit", help="Write JUnit XML (one test per gate) to this file."
    ),
    markdown: Path | None = typer.Option(
        None, "--markdown", help="Write the comparison as markdown to this file."
    ),
    price_per_hour: float | None = typer.Option(
        None, "--price-per-hour", help="USD per hour of the device: $/1M tokens."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, …"),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Dtype quality is scored in: auto (as each model runs: bfloat16 kernels for packed "
        "artifacts) or float32 (exact comparisons). Speed and memory are always the runtime's.",
    ),
    kld_store: str | None = typer.Option(
        None,
        "--kld-store",
        help="Baseline store for KLD: topk (default; top K tokens plus sampled tail per position) or full.",
    ),
    kld_topk: int | None = typer.Option(
        None, "--kld-topk", help="Top tokens per position kept (default 32)."
    ),
    kld_tail_samples: int | None = typer.Option(
        None, "--kld-tail-samples", help="Tail tokens sampled per position (default 224; 0: one bucket)."
    ),
    max_store: str | None = typer.Option(
        None, "--max-store", help="Refuse a baseline store larger than this (e.g. 2GB), before any work."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-evaluate even when cached results match."),
) -> None:
    """Score artifacts against a baseline with the shared harness; exit 1 when a gate fails."""
    from pydantic import ValidationError

    from compress.artifact import write_text_atomic
    from compress.evaluate.compare import comparison_rows, markdown_table, rich_table
    from compress.evaluate.harness import EvalRequest, evaluate
    from compress.evaluate.results import junit_xml
    from compress.evaluate.suite import Suite, load_suite
    from compress.ownership import check_report_path, report_inputs

    for flag, value in (("--metrics", metrics), ("--tasks", tasks)):
        if value is not None and not _split(value):  # `--metrics ''` would measure nothing, silently
            raise CompressError(f"{flag} is empty; give a comma-separated list (see compress eval --help)")
    if price_per_hour is not None and not (0 < price_per_hour < float("inf")):
        raise CompressError(f"--price-per-hour must be a positive number of USD, got {price_per_hour}")
    overrides = {
        "data": data,
        "seq_len": seq_len,
        "max_tokens": max_tokens,
        "metrics": _split(metrics),
        "tasks": _split(tasks),
        "dtype": dtype,
        "kld_store": kld_store,
        "kld_topk": kld_topk,
        "kld_tail_samples": kld_tail_samples,
        "max_store": max_store,
    }
    chosen = load_suite(suite).model_copy(update={k: v for k, v in overrides.items() if v is not None})
    try:
        chosen = Suite.model_validate(chosen.model_dump()).check()  # validates the overrides too
    except ValidationError as exc:
        raise CompressError(option_error(exc)) from exc
    measured = ", ".join(chosen.metrics)
    if tasks is not None and "tasks" not in chosen.metrics:
        raise CompressError(f"--tasks is given but the tasks metric is not measured (metrics: {measured})")
    if metrics is not None and "tasks" in chosen.metrics and not chosen.tasks:
        raise CompressError("--metrics asks for tasks but no task is named; pass --tasks NAME[,NAME]")
    if price_per_hour is not None and not {"speed", "cost"} <= set(chosen.metrics):
        raise CompressError(
            f"--price-per-hour prices the cost metric, which needs speed and cost (metrics: {measured})"
        )
    request = EvalRequest(artifacts, chosen, baseline, list(gate), price_per_hour, device, reuse=not no_cache)
    reads = report_inputs([*artifacts, baseline], [chosen.data, suite])
    for flag, path in (("--json", json_file), ("--junit", junit), ("--markdown", markdown)):
        check_report_path(path, reads, flag)  # before any work: a report never replaces an input
    report, problems = evaluate(request)
    rows = comparison_rows([r for r in [report.baseline, *report.results] if r is not None])
    if json_file:
        write_text_atomic(json_file, report.model_dump_json(indent=2))
    if junit:
        write_text_atomic(junit, junit_xml(report))
    if markdown:
        write_text_atomic(markdown, markdown_table(rows) + "\n")
    if console.mode.json:
        console.emit_json(report.model_dump())
    else:
        console.stdout.print(rich_table(rows, title=f"compress eval · suite {chosen.name} · {chosen.data}"))
        _print_gates(report)
    _exit_for(report.passed, problems)


def _print_gates(report: EvalReport) -> None:
    for result in report.results:
        for outcome in result.gates:
            style = "green" if outcome["passed"] else "bold red"
            console.stdout.print(f"[{style}]{result.name}: {outcome['message']}[/{style}]")


def _exit_for(passed: bool, problems: list[str]) -> None:
    """Exit 2 when something could not be measured as asked, else 1 when a gate failed."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        raise typer.Exit(2)
    if not passed:
        raise typer.Exit(1)


@app.command(
    epilog="Examples:\n\n  compress compare results.json\n\n"
    "  compress compare out/* --format markdown --plot pareto.png",
)
def compare(
    results: list[Path] = typer.Argument(..., help="Eval JSON files or evaluated artifact directories."),
    format: str = typer.Option("table", "--format", help="table, markdown, json or csv."),
    plot: Path | None = typer.Option(None, "--plot", help="Save quality-vs-size/speed plots (PNG)."),
    sort: str | None = typer.Option(
        None, "--sort", help="name, size, ppl, kld or speed (baseline stays first)."
    ),
) -> None:
    """Show evaluated artifacts side by side, baseline first."""
    from compress.evaluate.compare import FORMATS, SORT_KEYS, comparison_rows, render, sort_rows
    from compress.evaluate.compare import plot as save_plot
    from compress.evaluate.results import load_results
    from compress.ownership import check_report_path, report_inputs

    if format not in FORMATS:
        raise CompressError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}")
    if sort is not None and sort not in SORT_KEYS:
        raise CompressError(f"unknown sort key '{sort}'; choose one of {', '.join(SORT_KEYS)}")
    check_report_path(plot, report_inputs(results), "--plot")
    rows = sort_rows(comparison_rows(load_results(results)), sort)
    output = render(rows, "json" if console.mode.json else format)
    if isinstance(output, str):
        print(output)
    else:
        console.stdout.print(output)
    if plot:
        save_plot(rows, plot)
        console.notice(f"plot written to {plot}")


def _split(value: str | None) -> list[str] | None:
    return [item.strip() for item in value.split(",") if item.strip()] if value is not None else None


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
        console.emit_json(fingerprint)
        return
    preview = loaded.decode(windows.input_ids[0][:48])
    console.stdout.print(
        f"{fingerprint['samples']} windows × {fingerprint['seq_len']} tokens = "
        f"{fingerprint['tokens']:,} tokens from {source}\n"
        f"sha256 {fingerprint['sha256']}\nfirst window starts: {preview!r}"
    )


@app.command(
    "run",
    epilog="Examples:\n\n  compress run recipes/int4-gptq.yaml --set model=./my-model\n\n"
    "  compress run ci --set stages.int4.quantize.bits=3 --out runs/ci-3bit\n\n"
    "  compress run recipes/prune-distill-int4.yaml --set data.calib.samples=256 --dry-run",
)
def run_command(
    recipe: str = typer.Argument(
        ..., help="A recipe YAML file, or the name of one in recipes/ (ci, demo, …)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a recipe value, e.g. stages.int4.quantize.bits=3 (repeatable)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the stages, their cache keys and what is cached; run nothing."
    ),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Reuse finished stages and resume an interrupted one; --no-resume recomputes everything.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>)."),
) -> None:
    """Run a recipe: its stages (cached), then eval, gates, table and reports; exit 1 when a gate fails."""
    from compress.pipeline import default_run_dir, load_recipe, plan, run_recipe
    from compress.render import recipe_plan_view

    loaded = load_recipe(recipe, set_)
    if dry_run:
        planned = [stage.as_dict() for stage in plan(loaded, out, resume)]
        if console.mode.json:
            console.emit_json(planned)
        else:
            spec = loaded.recipe.eval
            console.stdout.print(
                recipe_plan_view(
                    loaded.recipe.name, out or default_run_dir(loaded), planned, spec.model_dump()
                )
            )
        return
    _show_run(run_recipe(loaded, out, resume=resume, command=_command()))


def _show_run(result: RunResult, header: dict | None = None) -> None:
    """A recipe run's comparison table and gates (or its JSON with `header`), then its exit code."""
    from compress.evaluate.compare import rich_table

    if console.mode.json:
        console.emit_json({**(header or {}), **result.model_dump()})
    else:
        title = f"compress run {result.recipe} · suite {result.eval.suite} · {result.run_dir}"
        console.stdout.print(rich_table(result.comparison, title=title))
        _print_gates(result.eval)
        console.notice(f"report.md, results.json and junit.xml written to {result.run_dir}")
    _exit_for(result.passed, result.problems)


@app.command(epilog="Examples:\n\n  compress demo\n\n  compress demo --fast --out /tmp/demo")
def demo(
    fast: bool = typer.Option(False, "--fast", help="A smaller, quicker demo model (what the tests use)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="The run directory (default: runs/demo, or runs/demo-fast)."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Retrain the demo model even when it is cached."),
) -> None:
    """Build the trained demo model offline and run recipes/demo.yaml on it, ending with the comparison."""
    from compress.demo import demo_model
    from compress.pipeline import load_recipe, run_recipe

    model_dir, record = demo_model(fast=fast, rebuild=rebuild)
    loaded = load_recipe("demo", ["model=builtin:demo-fast"] if fast else [])
    if not console.mode.json:
        console.stdout.print(
            f"demo model: {model_dir}\n"
            f"  {record['parameters']:,} parameters, vocabulary {record['vocab_size']}, "
            f"trained {record['recipe']['steps']} steps on {record['train_data']['tokens']:,} tokens\n"
            f"  held-out perplexity: [bold]{record['heldout_ppl']:.2f}[/bold] "
            f"(on {record['heldout_data']['tokens']:,} tokens of builtin:python-stdlib:heldout; "
            f"a model that learned nothing scores about {record['vocab_size']})"
        )
    run_dir = out or Path("runs") / ("demo-fast" if fast else "demo")
    result = run_recipe(loaded, run_dir, command=_command())
    _show_run(result, {"model": str(model_dir), "record": record})


# --- export ------------------------------------------------------------------------------------------

export_app = typer.Typer(
    help="Write a model or artifact in another runtime's format.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(export_app, name="export")


def _register_export_commands() -> None:
    from compress.cli_options import technique_command
    from compress.export.technique import EXPORT

    export_app.command("gguf", help=EXPORT.help, epilog=EXPORT.epilog)(
        technique_command(EXPORT, _command, fixed={"format": "gguf"})
    )


_register_export_commands()

# --- distill ----------------------------------------------------------------------------------------

distill_app = typer.Typer(
    help="Distillation: teacher generation, then student training; with no subcommand, both.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(distill_app, name="distill")


def _model_option(name: str, help: str) -> Parameter:
    return option(name, None, str | None, f"--{name}", help=help)


_TEACHER = _model_option("teacher", "The teacher: a model directory, hub id or artifact.")
_STUDENT = _model_option("student", "The student: an artifact (e.g. pruned), a model dir or hub id.")
_RESUME = option("resume", False, bool, "--resume", help="Continue from the last checkpoint of the same run.")
_FORCE = option("force", False, bool, "--force", "-f", help="Replace --out (and unusable work files).")
_TRUST = option(
    "trust_remote_code", False, bool, "--trust-remote-code", help="Run the model repo's own code."
)


def _out_option(help: str) -> Parameter:
    return option("out", None, Path | None, "--out", "-o", help=help)


def _library_options(config: type, params: dict[str, object]) -> dict[str, object]:
    """What a distill command hands the library: the config's fields among its parameters (flags,
    defaults and help come from the config), how the run was asked for, and the overwrite and
    remote-code switches."""
    fields = {name: params[name] for name in config.model_fields}
    return {
        **fields,
        "force": params["force"],
        "trust_remote_code": params["trust_remote_code"],
        "command": _command(),
    }


def _require_teacher(teacher: str | None) -> str:
    if teacher is None:
        raise CompressError("give the teacher: --teacher MODEL")
    return teacher


def _show_distillation(path: Path) -> None:
    """The training report, on the main process only (under `accelerate launch` every process runs)."""
    from accelerate import PartialState

    from compress.artifact import read_manifest
    from compress.distill.report import distillation_view

    if PartialState().is_main_process:
        console.show_written(path, read_manifest(path).extra["distillation"], distillation_view)


def _distill(ctx: typer.Context, **params: object) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from compress import distill as run_distill

    path = run_distill(
        _require_teacher(params["teacher"]),
        params["student"],
        params["out"],
        generations=params["generations"],
        resume=params["resume"],
        **_library_options(DistillConfig, params),
    )
    _show_distillation(path)


def _distill_generate(**params: object) -> None:
    from compress.distill.generate import generate

    if params["out"] is None:
        raise CompressError("give the output directory: --out DIR")
    path = generate(
        _require_teacher(params["teacher"]),
        params["out"],
        **_library_options(GenerateConfig, params),
    )
    meta = json.loads((path / "generation.json").read_text())
    summary = {key: meta.get(key) for key in ("completions", "tokens", "wall_s", "generated_tokens_per_s")}
    if console.mode.json:
        console.emit_json({"generations": str(path), **summary})
    else:
        console.stdout.print(
            f"[green]wrote[/green] {path}: {summary['completions']:,} completions, "
            f"{summary['tokens']:,} tokens"
        )


def _distill_train(**params: object) -> None:
    from compress.distill.train import train

    if params["data"] is None:
        raise CompressError("give the generations: --data DIR (from `compress distill generate`)")
    path = train(
        _require_teacher(params["teacher"]),
        params["student"],
        params["out"],
        data=params["data"],
        resume=params["resume"],
        **_library_options(TrainConfig, params),
    )
    _show_distillation(path)


_CONTEXT = Parameter("ctx", Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
_GENERATIONS = option(
    "generations", None, Path | None, "--generations", help="Where the generations go (default <out>.work/)."
)
_DATA = option("data", None, Path | None, "--data", help="Generations from `distill generate` (required).")

distill_app.callback(
    invoke_without_command=True,
    epilog="Examples:\n\n"
    "  compress distill --teacher ./big --student out/pruned --samples 2000 --steps 500\n\n"
    "  compress distill generate --teacher ./my-model --out gens --store-topk 32\n\n"
    "  compress distill train --teacher ./my-model --student out/pruned --data gens --loss kl\n\n"
    "  accelerate launch --multi_gpu --num_processes 8 -m compress distill train --teacher … --data gens",
)(
    with_parameters(
        _distill,
        [
            _CONTEXT,
            _TEACHER,
            _STUDENT,
            _out_option("Output artifact directory."),
            _GENERATIONS,
            *config_parameters(DistillConfig),
            _RESUME,
            _FORCE,
            _TRUST,
        ],
        "Distill a teacher into a student: generate, then train (or run one stage: generate, train).",
    )
)
distill_app.command(
    "generate",
    epilog="Examples:\n\n"
    "  compress distill generate --teacher ./big --prompts prompts.jsonl:prompt --out gens\n\n"
    "  compress distill generate --teacher ./my-model --samples 4096 --store-topk 32 --out gens",
)(
    with_parameters(
        _distill_generate,
        [
            _TEACHER,
            _out_option("The generation directory (required)."),
            *config_parameters(GenerateConfig),
            _FORCE,
            _TRUST,
        ],
        "Teacher completions over prompts, as a `datasets` dataset in resumable shards.",
    )
)
distill_app.command(
    "train",
    epilog="Examples:\n\n"
    "  compress distill train --teacher ./big --student out/pruned --data gens --steps 500\n\n"
    "  compress distill train --teacher ./big --student-config num_hidden_layers=6 --data gens --loss kl\n\n"
    "  compress distill train --teacher ./my-model --student out/pruned --data gens --resume",
)(
    with_parameters(
        _distill_train,
        [
            _TEACHER,
            _STUDENT,
            _DATA,
            _out_option("Output artifact directory."),
            *config_parameters(TrainConfig),
            _RESUME,
            _FORCE,
            _TRUST,
        ],
        "Train a student on teacher generations with α·T²·KL + (1−α)·CE; evaluate it at the end.",
    )
)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning every failure into one line and an exit code."""
    console.mode.debug = bool(os.environ.get("COMPRESS_DEBUG"))
    _invocation[:] = sys.argv[1:] if argv is None else argv
    _sync_technique_commands()
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
        # Out of space, read-only, a path that is a file, a JSON file that does not parse: the
        # user's, however deep and in whatever library's wrapper it arose (`user_error_message`).
        message = user_error_message(exc)
        if message is not None:
            _print_error(message, exc)
            return 2
        _print_error(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", exc
        )
        return INTERNAL_ERROR_EXIT


def _print_error(message: str, exc: BaseException) -> None:
    """The one `error:` line (after the traceback with --debug): a message of several lines, or one
    that already says `error:`, still makes one line; an empty one says at least what failed."""
    if console.mode.debug:
        traceback.print_exception(exc, file=sys.stderr)
    one_line = " ".join(message.split()).removeprefix("error: ") or type(exc).__name__
    print(f"error: {one_line}", file=sys.stderr)


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())
