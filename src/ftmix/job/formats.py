"""The data formats people bring, read into one shape: a conversation (system, then user and
assistant turns) or a plain text.

Formats and their column names follow LLaMA-Factory's ``dataset_info.json`` (``formatting``,
``columns``, ``tags``), so a dataset described there is described the same way here:

- ``alpaca``: ``instruction`` (the prompt), ``input`` (the query, optional), ``output`` (the
  response), optional ``system`` and ``history`` (earlier ``[prompt, response]`` pairs).
- ``sharegpt``: a list of turns under ``conversations``, each ``{"from": ..., "value": ...}`` with
  ``human``/``gpt``/``system`` as roles (ShareGPT, Axolotl's ``sharegpt``).
- ``openai``: a list of turns under ``messages``, each ``{"role": ..., "content": ...}`` with
  ``user``/``assistant``/``system`` (OpenAI's fine-tuning files, TRL's conversational format).
- ``text``: one ``text`` column, trained on whole (continued pre-training; no prompt to mask).
- ``dialogue``: ftmix's own SAMSum-style rows, ``dialogue`` and ``summary`` (``id`` optional); the
  dialogue goes through the prompt template, the summary is the response.

``format: auto`` (the default) decides from the columns; ``columns`` maps a format's names to the
file's (``{"prompt": "question", "response": "answer"}``), ``tags`` a conversation's keys and role
names (``role_tag``, ``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``).
Pure functions, no torch and no datasets: preflight detects the format before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftmix.errors import FtmixError

FORMATS = ("auto", "alpaca", "sharegpt", "openai", "text", "dialogue")

# each format's column names (LLaMA-Factory's keys, with its defaults)
COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
               "history": "history"},
    "sharegpt": {"messages": "conversations", "system": "system"},
    "openai": {"messages": "messages"},
    "text": {"text": "text"},
    "dialogue": {"dialogue": "dialogue", "summary": "summary", "id": "id"},
}
REQUIRED = {"alpaca": ("prompt", "response"), "sharegpt": ("messages",), "openai": ("messages",), "text": ("text",),
            "dialogue": ("dialogue", "summary")}
TAGS = {
    "sharegpt": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"},
    "openai": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "system_tag": "system"},
}
# role names other tools write for the same turns (ShareGPT files mix them)
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                "bot": "assistant", "chatgpt": "assistant", "system": "system"}


@dataclass(frozen=True)
class DataFormat:
    """A format with its column names and (conversations) tags resolved."""

    name: str
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    detected: bool = False

    def describe(self) -> str:
        mapped = {k: v for k, v in self.columns.items() if COLUMNS[self.name].get(k) != v}
        how = "detected from the columns" if self.detected else "as named"
        extra = f", columns {mapped}" if mapped else ""
        return f"{self.name} ({how}{extra})"


@dataclass
class Example:
    """One row read: a conversation (``messages``: role/content dicts, the last an assistant
    turn) or a plain ``text``."""

    messages: list[dict] | None = None
    text: str | None = None
    id: object = None
    dialogue: str | None = None  # dialogue rows: the dialogue inside the first user turn

    @property
    def prompt_messages(self) -> list[dict]:
        return self.messages[:-1]

    @property
    def response(self) -> str | None:
        return self.messages[-1]["content"] if self.messages else None


def resolve(columns_present: list[str], first_row: dict | None, name: str = "auto", columns: dict | None = None,
            tags: dict | None = None) -> DataFormat:
    """The format of a table with these columns: named, or detected; its needed columns present."""
    name = (name or "auto").strip().lower()
    if name not in FORMATS:
        raise FtmixError(f"format {name!r} is not one of {', '.join(FORMATS)}")
    present = set(columns_present)
    columns = dict(columns or {})
    detected = name == "auto"
    if detected:
        name = _detect(present, columns, first_row)
    unknown = sorted(set(columns) - set(COLUMNS[name]))
    if unknown:
        raise FtmixError(f"columns: {', '.join(unknown)} not a key of the {name} format "
                         f"(its keys: {', '.join(COLUMNS[name])})")
    resolved = dict(COLUMNS[name], **columns)
    missing = [resolved[k] for k in REQUIRED[name] if resolved[k] not in present]
    if missing:
        raise FtmixError(f"data has columns {', '.join(columns_present)}; the {name} format needs "
                         f"{', '.join(missing)} (map yours with columns: {{...}})")
    found_tags = {}
    if name in TAGS:
        found_tags = dict(TAGS[_conversation_kind(name, first_row, resolved["messages"])], **(tags or {}))
    elif tags:
        raise FtmixError(f"tags apply to conversations (sharegpt, openai), not to the {name} format")
    return DataFormat(name, resolved, found_tags, detected)


def _detect(present: set, columns: dict, first_row: dict | None) -> str:
    for name in ("openai", "sharegpt", "alpaca", "dialogue", "text"):
        names = dict(COLUMNS[name], **{k: v for k, v in columns.items() if k in COLUMNS[name]})
        if all(names[k] in present for k in REQUIRED[name]):
            if name in TAGS:
                return _conversation_kind(name, first_row, names["messages"])
            return name
    raise FtmixError(f"cannot tell the data's format from its columns ({', '.join(sorted(present))}): ftmix reads "
                     "alpaca (instruction, input, output), sharegpt (conversations), openai (messages), text (text) "
                     "and dialogue (dialogue, summary); name it with format: ... and map columns with columns: {...}")


def _conversation_kind(name: str, first_row: dict | None, column: str) -> str:
    """sharegpt or openai: what the turns' keys say (either column name holds either kind)."""
    turns = (first_row or {}).get(column)
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        if "from" in turns[0] or "value" in turns[0]:
            return "sharegpt"
        if "role" in turns[0] or "content" in turns[0]:
            return "openai"
    return name


def read_row(row, fmt: DataFormat, template: str, index: int) -> tuple[Example | None, str | None]:
    """(the example, None) or (None, why the row is skipped: ``missing`` / ``empty`` + detail)."""
    if not isinstance(row, dict):
        return None, "missing: not a mapping"
    c = fmt.columns
    rid = row.get(c.get("id", "id"), index)
    if fmt.name == "text":
        text = row.get(c["text"])
        if text is None:
            return None, f"missing: row {rid}: no {c['text']}"
        if not isinstance(text, str) or not text.strip():
            return None, f"empty: row {rid}: empty or non-text {c['text']}"
        return Example(text=text, id=rid), None
    if fmt.name == "dialogue":
        dialogue, summary = row.get(c["dialogue"]), row.get(c["summary"])
        if dialogue is None or summary is None:
            return None, f"missing: row {rid}: missing dialogue or summary"
        if not _text(dialogue) or not _text(summary):
            return None, f"empty: row {rid}: empty or non-text dialogue/summary"
        messages = [{"role": "user", "content": template.replace("{dialogue}", dialogue)},
                    {"role": "assistant", "content": summary}]
        return Example(messages=messages, id=rid, dialogue=dialogue), None
    if fmt.name == "alpaca":
        return _alpaca(row, c, rid)
    return _conversation(row, fmt, rid)


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _alpaca(row: dict, c: dict, rid) -> tuple[Example | None, str | None]:
    prompt, query, response = row.get(c["prompt"]), row.get(c["query"]), row.get(c["response"])
    if prompt is None or response is None:
        return None, f"missing: row {rid}: missing {c['prompt']} or {c['response']}"
    if not isinstance(prompt, str) or not _text(response) or (query is not None and not isinstance(query, str)):
        return None, f"empty: row {rid}: empty or non-text {c['prompt']}/{c['response']}"
    user = "\n".join(x for x in (prompt, query) if x and x.strip())  # LLaMA-Factory joins them so
    if not user.strip():
        return None, f"empty: row {rid}: empty {c['prompt']}"
    messages = []
    system = row.get(c["system"])
    if _text(system):
        messages.append({"role": "system", "content": system})
    for pair in row.get(c["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            return None, f"empty: row {rid}: {c['history']} must be a list of [prompt, response] pairs"
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    return Example(messages=messages, id=rid), None


def _conversation(row: dict, fmt: DataFormat, rid) -> tuple[Example | None, str | None]:
    c, t = fmt.columns, fmt.tags
    turns = row.get(c["messages"])
    if turns is None:
        return None, f"missing: row {rid}: no {c['messages']}"
    if not isinstance(turns, list) or not turns:
        return None, f"empty: row {rid}: {c['messages']} is not a list of turns"
    roles = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["system_tag"]: "system"}
    messages = []
    system = row.get(c["system"]) if "system" in c else None
    if _text(system):
        messages.append({"role": "system", "content": system})
    for turn in turns:
        if not isinstance(turn, dict):
            return None, f"empty: row {rid}: a turn is not a mapping"
        raw_role, content = turn.get(t["role_tag"]), turn.get(t["content_tag"])
        role = roles.get(raw_role) or ROLE_ALIASES.get(str(raw_role).lower())
        if role is None:
            return None, f"empty: row {rid}: unknown role {raw_role!r} (map it with tags: {{...}})"
        if not isinstance(content, str):
            return None, f"empty: row {rid}: a {role} turn has no text"
        messages.append({"role": role, "content": content})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # a trailing user turn has no response to learn
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        return None, f"empty: row {rid}: no assistant turn to learn"
    return Example(messages=messages, id=rid), None
