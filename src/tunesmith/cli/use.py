"""`tunesmith generate | chat | serve | export`: use a finetuned model (or any model) once it exists.

`generate` is shared: `tunesmith generate RUN|MODEL ...` answers prompts, while `tunesmith generate
self-instruct ...` and `tunesmith generate from-docs ...` make training data with a teacher model
(`tunesmith.cli.generate_data`). Its first word decides which, so it takes the rest of the line unparsed.

Every default and most help texts come from the config schema (`GenerateConfig`, `ChatConfig`, `ServeConfig`,
`ExportConfig`), so they are written down once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing

from tunesmith.cli import field_help
from tunesmith.cli.generate_data import TARGETS as DATA_GENERATORS

DECODING_FLAGS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "precision")
"""Fields of `DecodingConfig` that have a flag of the same name (`--max-new-tokens`...)."""


def _choices(section, name: str) -> tuple[str, ...]:
    return typing.get_args(section.model_fields[name].annotation)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN|MODEL",
                        help="a run folder (its trained model and template), a model folder, or a model alias")
    parser.add_argument("--base", action="store_true",
                        help="use the run's base model (same template) instead of the finetuned one")


def _add_precision(parser: argparse.ArgumentParser, section) -> None:
    parser.add_argument("--precision", choices=_choices(section, "precision"),
                        default=section.model_fields["precision"].default, help=field_help(section, "precision"))


def _add_decoding(parser: argparse.ArgumentParser, section) -> None:
    fields = section.model_fields
    parser.add_argument("--max-new-tokens", type=int, default=fields["max_new_tokens"].default, metavar="N",
                        help=field_help(section, "max_new_tokens"))
    parser.add_argument("--temperature", type=float, default=fields["temperature"].default,
                        help=field_help(section, "temperature"))
    parser.add_argument("--top-p", type=float, default=fields["top_p"].default, help=field_help(section, "top_p"))
    parser.add_argument("--seed", type=int, default=fields["seed"].default, help=field_help(section, "seed"))
    parser.add_argument("--stop", action="append", default=list(fields["stop"].default), metavar="TEXT",
                        help=field_help(section, "stop", show_default=False) + " (repeatable)")
    _add_precision(parser, section)


def _answer_parser() -> argparse.ArgumentParser:
    from tunesmith.config import GenerateConfig

    parser = argparse.ArgumentParser(
        prog="tunesmith generate", description="Answer prompts with a run's model, using the template it was "
        "trained with. Prompts come from --prompt or a JSONL file (--input) whose lines hold prompt (or "
        "instruction/question, with optional input and system) or messages.")
    _add_target(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt to answer (repeatable)")
    parser.add_argument("--input", metavar="FILE", help="JSONL file of prompts, answered in batches")
    parser.add_argument("--output", metavar="FILE",
                        help="write JSONL results here (input fields + output, finish_reason, token counts)")
    parser.add_argument("--batch-size", type=int, default=GenerateConfig.model_fields["batch_size"].default,
                        help=field_help(GenerateConfig, "batch_size"))
    _add_decoding(parser, GenerateConfig)
    return parser


def _register_generate(subparsers) -> None:
    generate = subparsers.add_parser(
        "generate", help="answer prompts with a run or model (or: generate self-instruct|from-docs for data)",
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False,
        usage="tunesmith generate RUN|MODEL --prompt TEXT | --input FILE [options]\n"
              "       tunesmith generate self-instruct|from-docs [options]",
        description="With a run or model: answer prompts (options below; `tunesmith generate RUN --help`).\n"
                    "With self-instruct or from-docs: make training data with a teacher model "
                    "(`tunesmith generate self-instruct --help`).",
        epilog=_answer_parser().format_help())
    generate.add_argument("-h", "--help", action="help", help="show this help and exit")
    generate.add_argument("target", metavar="RUN|MODEL|self-instruct|from-docs")
    generate.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    generate.set_defaults(handler=_generate)


def _register_serve(subparsers) -> None:
    from tunesmith.config import ServeConfig

    fields = ServeConfig.model_fields
    serve = subparsers.add_parser(
        "serve", help="serve a run or model over an OpenAI-compatible HTTP API",
        description="OpenAI-compatible /v1/models, /v1/chat/completions and /v1/completions (streaming too). "
                    "Point any OpenAI client at http://HOST:PORT/v1.")
    _add_target(serve)
    serve.add_argument("--host", default=fields["host"].default, help=field_help(ServeConfig, "host"))
    serve.add_argument("--port", type=int, default=fields["port"].default, help=field_help(ServeConfig, "port"))
    serve.add_argument("--api-key", default=os.environ.get("TUNESMITH_API_KEY"),
                       help="require `Authorization: Bearer KEY` (default: $TUNESMITH_API_KEY; none = open)")
    serve.add_argument("--batch-size", type=int, default=fields["batch_size"].default,
                       help=field_help(ServeConfig, "batch_size"))
    serve.add_argument("--max-tokens", type=int, default=fields["max_tokens"].default,
                       help=field_help(ServeConfig, "max_tokens"))
    _add_precision(serve, ServeConfig)
    serve.set_defaults(handler=_serve)


def _register_export(subparsers) -> None:
    from tunesmith.config import ExportConfig
    from tunesmith.config.commands import GGUFQuant

    fields = ExportConfig.model_fields
    export = subparsers.add_parser(
        "export", help="export a run's model as a plain Hugging Face folder (optionally merged, or GGUF)")
    export.add_argument("run", metavar="RUN", help="run folder with a trained model")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced if it exists)")
    export.add_argument("--merge", action="store_true", default=fields["merge"].default,
                        help=field_help(ExportConfig, "merge", show_default=False))
    export.add_argument("--dtype", choices=_choices(ExportConfig, "dtype"), default=fields["dtype"].default,
                        help=field_help(ExportConfig, "dtype"))
    export.add_argument("--gguf", action="store_true", default=fields["gguf"].default,
                        help=field_help(ExportConfig, "gguf", show_default=False))
    export.add_argument("--quant", choices=typing.get_args(GGUFQuant), default=fields["quant"].default,
                        type=str.lower, help=field_help(ExportConfig, "quant", show_default=False))
    export.add_argument("--ollama", action="store_true", default=fields["ollama"].default,
                        help=field_help(ExportConfig, "ollama", show_default=False))
    export.add_argument("--verify", type=int, default=fields["verify"].default, metavar="N",
                        help=field_help(ExportConfig, "verify", show_default=False))
    export.add_argument("--verify-max-new-tokens", type=int, default=fields["verify_max_new_tokens"].default,
                        metavar="N", help=field_help(ExportConfig, "verify_max_new_tokens"))
    export.set_defaults(handler=_export)


def register(subparsers) -> None:
    from tunesmith.config import ChatConfig

    _register_generate(subparsers)
    chat = subparsers.add_parser(
        "chat", help="chat with a run or model in the terminal (streams; /reset, /system TEXT, /exit)")
    _add_target(chat)
    chat.add_argument("--system", help="system prompt for the conversation (/system changes it)")
    _add_decoding(chat, ChatConfig)
    chat.set_defaults(handler=_chat)
    _register_serve(subparsers)
    _register_export(subparsers)


def _section(section, args: argparse.Namespace, names) -> object:
    """The flags as a validated config section.

    Raises:
        ConfigError: a flag out of range, naming it.
    """
    from tunesmith.config import validate_section

    return validate_section(section, {name: getattr(args, name) for name in names}, "flags")


def _which(args: argparse.Namespace) -> str:
    return "base" if args.base else "finetuned"


def _generate(args: argparse.Namespace) -> int:
    if args.target in DATA_GENERATORS:
        from tunesmith.cli import generate_data

        return generate_data.run(args.target, args.rest)
    from tunesmith import api
    from tunesmith.config import GenerateConfig

    parser = _answer_parser()
    answer = parser.parse_args([args.target, *args.rest])
    if not answer.prompt and not answer.input:
        parser.error("give --prompt TEXT or --input FILE")
    settings = _section(GenerateConfig, answer, DECODING_FLAGS + ("batch_size",))
    results = api.generate_answers(answer.target, prompts=answer.prompt, input_path=answer.input,
                                   output_path=answer.output, settings=settings, which=_which(answer))
    if answer.output:
        print(f"wrote {len(results)} answers to {answer.output}", file=sys.stderr)
    elif len(results) == 1:
        print(results[0]["output"])
    else:
        for result in results:
            print(json.dumps(result, ensure_ascii=False))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.cli.chat import chat_loop
    from tunesmith.config import ChatConfig

    settings = _section(ChatConfig, args, DECODING_FLAGS)
    chat_loop(api.open_chat(args.target, settings=settings, system=args.system, which=_which(args)))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.config import ServeConfig

    limits = _section(ServeConfig, args, ("host", "port", "batch_size", "max_tokens", "precision"))
    server = api.open_server(args.target, limits=limits, api_key=args.api_key or None, which=_which(args))
    if server.is_open:
        print(f"warning: listening on {server.host} without --api-key: anyone who can reach this port can use the "
              f"model", file=sys.stderr, flush=True)
    print(f"serving {server.name} at {server.url} (OpenAI-compatible; Ctrl-C stops)", flush=True)
    server.run()
    return 0


def _export(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.config import ExportConfig

    names = ("merge", "dtype", "gguf", "quant", "ollama", "verify", "verify_max_new_tokens")
    result = api.export(args.run, args.out, settings=_section(ExportConfig, args, names))
    print(f"exported to {result.out}")
    if result.gguf is not None:
        print(f"gguf file:  {result.gguf}")
    if result.adapter is not None:
        print(f"gguf LoRA adapter: {result.adapter} (llama.cpp: -m {result.gguf.name} --lora {result.adapter.name})")
    if result.modelfile is not None:
        name = result.out.name.lower()
        print(f"Ollama: cd {result.out} && ollama create {name} -f Modelfile && ollama run {name}")
    report = result.verification
    if report is not None:
        print(report.table())
        if not report.passed:
            print(f"error: the GGUF does not answer like the run: {'; '.join(report.problems)} "
                  f"(details in {result.out / 'verify.json'})", file=sys.stderr)
            return 1
    return 0
