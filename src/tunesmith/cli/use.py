"""`tunesmith generate | chat | serve | export`: use a finetuned model (or any model) once it exists.

`generate` is shared: `tunesmith generate RUN|MODEL ...` answers prompts, while `tunesmith generate
self-instruct ...` and `tunesmith generate from-docs ...` make training data with a teacher model
(`tunesmith.cli.generate_data`). Its first word decides which, so it takes the rest of the line unparsed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tunesmith.cli.generate_data import TARGETS as DATA_GENERATORS


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN|MODEL",
                        help="a run folder (its trained model and template), a model folder, or a model alias")
    parser.add_argument("--base", action="store_true",
                        help="use the run's base model (same template) instead of the finetuned one")


def _add_decoding(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                        help=f"longest answer in tokens (default {max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default) decodes greedily; above 0 samples at that temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when sampling (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling, for repeatable samples")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop the answer before this text (repeatable)")


def _answer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith generate", description="Answer prompts with a run's model, using the template it was "
        "trained with. Prompts come from --prompt or a JSONL file (--input) whose lines hold prompt (or "
        "instruction/question, with optional input and system) or messages.")
    _add_target(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a prompt to answer (repeatable)")
    parser.add_argument("--input", metavar="FILE", help="JSONL file of prompts, answered in batches")
    parser.add_argument("--output", metavar="FILE",
                        help="write JSONL results here (input fields + output, finish_reason, token counts)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    _add_decoding(parser, max_new_tokens=128)
    return parser


def register(subparsers) -> None:
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

    chat = subparsers.add_parser(
        "chat", help="chat with a run or model in the terminal (streams; /reset, /system TEXT, /exit)")
    _add_target(chat)
    chat.add_argument("--system", help="system prompt for the conversation (/system changes it)")
    _add_decoding(chat, max_new_tokens=256)
    chat.set_defaults(handler=_chat)

    # defaults come from config.ServeConfig in the handler: importing pydantic here would slow every `--help`
    serve = subparsers.add_parser(
        "serve", help="serve a run or model over an OpenAI-compatible HTTP API",
        description="OpenAI-compatible /v1/models, /v1/chat/completions and /v1/completions (streaming too). "
                    "Point any OpenAI client at http://HOST:PORT/v1.")
    _add_target(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--api-key", default=os.environ.get("TUNESMITH_API_KEY"),
                       help="require `Authorization: Bearer KEY` (default: $TUNESMITH_API_KEY; none = open)")
    serve.add_argument("--batch-size", type=int, help="requests answered together (default 8)")
    serve.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask for (default 1024)")
    serve.set_defaults(handler=_serve)

    export = subparsers.add_parser(
        "export", help="export a run's model as a plain Hugging Face folder (optionally merged, or GGUF)")
    export.add_argument("run", metavar="RUN", help="run folder with a trained model")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced if it exists)")
    export.add_argument("--merge", action="store_true",
                        help="merge LoRA adapters into the base weights (a standalone model)")
    export.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32", help="weight precision (default fp32)")
    export.add_argument("--gguf", action="store_true", help="also write a GGUF file for llama.cpp (llama models)")
    export.set_defaults(handler=_export)


def _options(args: argparse.Namespace):
    """Decoding flags as GenerationOptions (`--temperature 0` means greedy).

    Raises:
        GenerationError: a flag out of range, naming it.
    """
    from tunesmith.errors import GenerationError
    from tunesmith.use.generation import GenerationOptions

    if args.temperature < 0:
        raise GenerationError(f"--temperature {args.temperature}: must be 0 (greedy) or more")
    sample = args.temperature > 0
    return GenerationOptions(max_new_tokens=args.max_new_tokens, do_sample=sample,
                             temperature=args.temperature if sample else 1.0, top_p=args.top_p, seed=args.seed,
                             stop=tuple(args.stop))


def _generate(args: argparse.Namespace) -> int:
    if args.target in DATA_GENERATORS:
        from tunesmith.cli import generate_data

        return generate_data.run(args.target, args.rest)
    from tunesmith import api

    parser = _answer_parser()
    answer = parser.parse_args([args.target, *args.rest])
    if not answer.prompt and not answer.input:
        parser.error("give --prompt TEXT or --input FILE")
    if answer.batch_size < 1:
        parser.error(f"--batch-size {answer.batch_size}: must be at least 1")
    results = api.generate_answers(answer.target, prompts=answer.prompt, input_path=answer.input,
                                   output_path=answer.output, options=_options(answer),
                                   which="base" if answer.base else "finetuned", batch_size=answer.batch_size)
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

    api.chat(args.target, options=_options(args), system=args.system, which="base" if args.base else "finetuned")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tunesmith import api
    from tunesmith.config import ServeConfig, validate_section

    given = {"host": args.host, "port": args.port, "batch_size": args.batch_size, "max_tokens": args.max_tokens}
    limits = validate_section(ServeConfig, {k: v for k, v in given.items() if v is not None}, "serve")
    api.serve(args.target, limits=limits, api_key=args.api_key or None, which="base" if args.base else "finetuned")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tunesmith import api

    result = api.export(args.run, args.out, merge=args.merge, dtype=args.dtype, gguf=args.gguf)
    print(f"exported to {result.out}")
    if result.gguf is not None:
        print(f"gguf file:  {result.gguf}")
    return 0
