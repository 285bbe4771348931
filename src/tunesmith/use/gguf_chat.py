"""The run's template as llama.cpp and Ollama understand it: a Jinja chat template for the GGUF, a Modelfile.

Exports that answer differently in Ollama nearly always lack the template's stop tokens or template. So the
run's template is measured, not guessed: it renders conversations whose texts are markers, and the text around
the markers gives each role's prefix and suffix (`<|im_start|>user\\n` ... `<|im_end|>\\n` for ChatML). One
`TurnFormat` then writes the Jinja template (llama.cpp), the Go template (Ollama) and the stop tokens, and it is
accepted only when it re-renders sample conversations exactly as the run's template does.

Prompt templates (alpaca, qa, none) get the same treatment: the system text, a blank line, the prompt scaffold
around the user message, the answer and the end token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from tunesmith.config import TemplateConfig
from tunesmith.data.records import Record
from tunesmith.errors import ModelError

MARK = "\x00{}\x00"
"""Marker text for role contents; a NUL never occurs in a real template."""


@dataclass(frozen=True)
class TurnFormat:
    """Text around each role's content; a conversation is the concatenation of its turns.

    `default_system` is the system turn the template writes when a conversation has none (SmolLM2's template
    adds one; a run's `template.system_prompt` does too), so Ollama gets it as SYSTEM.
    """

    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    default_system: str | None = None

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the run's template renders it (a trailing assistant header when asked)."""
        turns = list(messages)
        if self.default_system is not None and not (turns and turns[0]["role"] == "system"):
            turns.insert(0, {"role": "system", "content": self.default_system})
        parts = {"system": (self.system_prefix, self.system_suffix), "user": (self.user_prefix, self.user_suffix),
                 "assistant": (self.assistant_prefix, self.assistant_suffix)}
        text = "".join(parts[m["role"]][0] + m["content"] + parts[m["role"]][1] for m in turns)
        return text + (self.assistant_prefix if add_generation_prompt else "")


SAMPLE_CONVERSATIONS = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
)
"""Conversations a derived format must render exactly as the run's template does (multi-turn for chat only)."""


def _between(text: str, left: str | None, right: str | None) -> str:
    start = 0 if left is None else text.index(left) + len(left)
    return text[start:] if right is None else text[start:text.index(right, start)]


def _chat_render(tokenizer, template: TemplateConfig, messages: list[dict], add_generation_prompt: bool) -> str:
    """The run's chat rendering: the configured system prompt goes first when a conversation has none."""
    if template.system_prompt and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": template.system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_turn_format(tokenizer, template: TemplateConfig) -> TurnFormat:
    """Role prefixes and suffixes of the tokenizer's chat template, read off marker conversations.

    Raises:
        ModelError: the template is not a plain sequence of turns (it merges roles, drops the system turn...).
    """
    s, u1, a1, u2, a2 = (MARK.format(k) for k in ("s", "u1", "a1", "u2", "a2"))
    conv = [{"role": "system", "content": s}, {"role": "user", "content": u1}, {"role": "assistant", "content": a1},
            {"role": "user", "content": u2}, {"role": "assistant", "content": a2}]
    try:
        full = tokenizer.apply_chat_template(conv, tokenize=False)
        open_turn = tokenizer.apply_chat_template(conv[:4], tokenize=False)
        generation = tokenizer.apply_chat_template(conv[:4], tokenize=False, add_generation_prompt=True)
        no_system = _chat_render(tokenizer, TemplateConfig(), [{"role": "user", "content": u1}], False)
        assistant_suffix = _between(full, a2, None)
        user_prefix = _between(full, a1, u2)[len(assistant_suffix):]
        user_suffix = _between(open_turn, u2, None)
        fmt = TurnFormat(
            system_prefix=_between(full, None, s), system_suffix=_between(full, s, u1)[:-len(user_prefix) or None],
            user_prefix=user_prefix, user_suffix=user_suffix,
            assistant_prefix=generation[len(open_turn):], assistant_suffix=assistant_suffix)
        default = template.system_prompt
        head = _between(no_system, None, u1)[:-len(user_prefix) or None]
        if default is None and head:
            default = head.removeprefix(fmt.system_prefix).removesuffix(fmt.system_suffix)
        fmt = TurnFormat(**{**fmt.__dict__, "default_system": default})
    except Exception as e:  # noqa: BLE001 - any failure of the model's own template (markers, roles) means the same
        raise ModelError(f"the chat template is not a plain sequence of turns ({type(e).__name__}: {e}); "
                         f"tunesmith cannot describe it for llama.cpp/Ollama") from None
    for messages in SAMPLE_CONVERSATIONS:
        for gen in (True, False):
            if fmt.render(messages, gen) != _chat_render(tokenizer, template, list(messages), gen):
                raise ModelError("the chat template renders conversations in a way tunesmith cannot describe as "
                                 "turns (it is not a plain sequence of role prefix, content, suffix)")
    return fmt


def prompt_turn_format(template_name: str, template: TemplateConfig, end_text: str) -> TurnFormat:
    """The format of a prompt template (alpaca, qa, none): system text and a blank line, the scaffold around the
    user message, then the answer and the end token.

    Raises:
        ModelError: a `jinja` template, which can place the system text anywhere.
    """
    from tunesmith.prepare.templates import PROMPT_TEMPLATES

    if template_name == "jinja":
        raise ModelError("template.name=jinja: a user's Jinja prompt template cannot be turned into llama.cpp/Ollama "
                         "turns yet; export with template alpaca/qa/none/chat")
    mark = MARK.format("p")
    scaffold = PROMPT_TEMPLATES[template_name](Record("export", None, "prompt_completion", prompt=mark), template)
    before, after = scaffold.split(mark)
    return TurnFormat(system_prefix="", system_suffix="\n\n", user_prefix=before, user_suffix=after,
                      assistant_prefix="", assistant_suffix=end_text)


def turn_format(template: TemplateConfig, tokenizer) -> TurnFormat:
    """The run's template as turns, whatever its kind.

    Raises:
        ModelError: a template that cannot be described as turns.
    """
    from tunesmith.prepare.templates import end_token, resolve_template_name

    name = resolve_template_name(template, tokenizer)
    if name == "chat":
        return chat_turn_format(tokenizer, template)
    return prompt_turn_format(name, template, end_token(tokenizer))


def _jinja_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def jinja_chat_template(fmt: TurnFormat) -> str:
    """A Jinja chat template (HF/llama.cpp conventions: `messages`, `add_generation_prompt`) rendering `fmt`.

    Every literal is a quoted string inside an expression, so whitespace control (`trim_blocks`) cannot change it.
    """
    q = _jinja_string
    default = "" if fmt.default_system is None else (
        "{%- if messages | length == 0 or messages[0]['role'] != 'system' -%}"
        f"{{{{ {q(fmt.system_prefix + fmt.default_system + fmt.system_suffix)} }}}}{{%- endif -%}}")
    return (default + "{%- for message in messages -%}"
            f"{{%- if message['role'] == 'system' -%}}{{{{ {q(fmt.system_prefix)} + message['content'] + "
            f"{q(fmt.system_suffix)} }}}}"
            f"{{%- elif message['role'] == 'user' -%}}{{{{ {q(fmt.user_prefix)} + message['content'] + "
            f"{q(fmt.user_suffix)} }}}}"
            f"{{%- elif message['role'] == 'assistant' -%}}{{{{ {q(fmt.assistant_prefix)} + message['content'] + "
            f"{q(fmt.assistant_suffix)} }}}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {q(fmt.assistant_prefix)} }}}}{{%- endif -%}}")


def _go_literal(text: str) -> str:
    """Text for a Go template: `{{` would open an action, so it is written as an action printing it."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(fmt: TurnFormat) -> str:
    """Ollama's TEMPLATE (Go text/template over `.Messages`) rendering `fmt`; the last user turn gets the assistant
    header, a trailing assistant turn is continued. No `{{-` trimming, so the format's newlines stay exact."""
    g = _go_literal
    return ("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f'{{{{ if eq .Role "system" }}}}{g(fmt.system_prefix)}{{{{ .Content }}}}{g(fmt.system_suffix)}'
            f'{{{{ else if eq .Role "user" }}}}{g(fmt.user_prefix)}{{{{ .Content }}}}{g(fmt.user_suffix)}'
            f'{{{{ if $last }}}}{g(fmt.assistant_prefix)}{{{{ end }}}}'
            f'{{{{ else if eq .Role "assistant" }}}}{g(fmt.assistant_prefix)}{{{{ .Content }}}}'
            f'{{{{ if not $last }}}}{g(fmt.assistant_suffix)}{{{{ end }}}}'
            "{{ end }}{{ end }}")


def stop_texts(tokenizer, fmt: TurnFormat, end_ids: Sequence[int]) -> list[str]:
    """Every text that must end an answer in Ollama: the end tokens, and a special token that opens a user
    turn (a model that runs on into a made-up next turn is stopped there)."""
    texts = [tokenizer.convert_ids_to_tokens(i) for i in sorted(end_ids)]
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values() if t.special}
    opener = next((t for t in sorted(special, key=len, reverse=True) if t and fmt.user_prefix.startswith(t)), None)
    return list(dict.fromkeys(texts + ([opener] if opener else [])))


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ModelError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(gguf_name: str, fmt: TurnFormat, stops: Sequence[str], adapter_name: str | None = None) -> str:
    """An Ollama Modelfile for the GGUF beside it: FROM, ADAPTER (an unmerged LoRA), TEMPLATE, SYSTEM, stops.

    Greedy by default (temperature 0), as tunesmith's evaluation answers.
    """
    lines = [f"FROM ./{gguf_name}"]
    if adapter_name:
        lines.append(f"ADAPTER ./{adapter_name}")
    lines.append(f"TEMPLATE {_quoted(ollama_template(fmt), 'template')}")
    if fmt.default_system is not None:
        lines.append(f"SYSTEM {_quoted(fmt.default_system, 'system prompt')}")
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def ollama_readme(model_name: str) -> str:
    """The lines that register and run the export in Ollama."""
    return (f"# Run this model in Ollama\n\n```\nollama create {model_name} -f Modelfile\n"
            f"ollama run {model_name}\n```\n")
