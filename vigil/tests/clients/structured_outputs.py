"""Structured outputs through the official `openai` client, checked against the specification:
every output validates against its JSON schema (with `jsonschema`), matches its regex, is one of
its choices, or parses under its grammar. Usage: structured_outputs.py BASE_URL MODEL.
Prints one line per check and exits non-zero at the first failure."""

import json
import re
import sys

import jsonschema
import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE + "/v1", api_key="none", max_retries=0, timeout=300)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["engineer", "doctor", "artist"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "skills": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "role", "address", "skills"],
    "additionalProperties": False,
}

PROMPTS = [
    "Describe a software engineer from Berlin.",
    "Invent a doctor who lives by the sea.",
    "Tell me about a painter.",
    "Make up a person who likes music.",
    "Who is your favourite scientist?",
    "Describe your neighbour.",
    "Create a character for a novel.",
    "Describe a chef from Lyon.",
    "Invent a pilot.",
    "Tell me about a teacher in a small town.",
    "Describe a gardener.",
    "Make up a young programmer.",
    "Describe an old sailor.",
    "Invent a nurse who runs marathons.",
    "Describe a street musician.",
    "Tell me about an architect.",
    "Create a villain for a film.",
    "Describe a farmer.",
    "Invent an astronaut.",
    "Describe a librarian who paints.",
]


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + detail if detail else ""), flush=True)
    if not ok:
        sys.exit(1)


def chat(prompt, stream=False, **kw):
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        r = client.chat.completions.create(model=MODEL, messages=messages, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kw):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish


def completion(prompt, stream=False, **kw):
    if not stream:
        r = client.completions.create(model=MODEL, prompt=prompt, **kw)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.completions.create(model=MODEL, prompt=prompt, stream=True, **kw):
        for c in chunk.choices:
            text += c.text or ""
            finish = c.finish_reason or finish
    return text, finish


def completions_of(text):
    """The objects `text` completes to by closing its open string, a missing value and its open
    brackets: what a JSON constraint guarantees of an output that max_tokens cut short is that
    there is one."""
    stack, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    if escaped:
        text = text[:-1]
    closers = "".join("}" if c == "{" else "]" for c in reversed(stack))
    opened = '"' if in_string else ""
    for filler in ("", "null", ":null", "0", '"'):
        try:
            value = json.loads(text + opened + filler + closers)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def json_object_prefix(text):
    return any(True for _ in completions_of(text))


def unfinished(schema):
    """`schema` without the constraints an unfinished value cannot meet yet (required keys,
    minimum lengths and counts); every other constraint stands."""
    if isinstance(schema, dict):
        return {k: unfinished(v) for k, v in schema.items()
                if k not in ("required", "minItems", "minLength")}
    if isinstance(schema, list):
        return [unfinished(v) for v in schema]
    return schema


def valid(value, schema):
    try:
        jsonschema.validate(value, schema)
        return True
    except jsonschema.ValidationError:
        return False


# Each output meets the schema where the model stopped; where max_tokens cut it (at temperature
# 1 a 135M model may pad with whitespace, which JSON allows, until the limit), it is the start of
# one. Most complete.
schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
complete = 0
for i, prompt in enumerate(PROMPTS):
    stream = i % 2 == 1
    text, finish = chat(prompt, stream=stream, temperature=1.0, seed=i, max_tokens=300,
                        response_format=schema_format)
    if finish == "stop":
        try:
            ok = valid(json.loads(text), PERSON)
        except ValueError as e:
            ok, text = False, f"{text!r}: {e}"
        complete += ok
    else:
        ok = finish == "length" and any(valid(v, unfinished(PERSON)) for v in completions_of(text))
        text = repr(text)
    check(f"json_schema {'stream' if stream else 'whole'} #{i}", ok, f"finish={finish} {text}")
check("complete outputs of the json_schema requests", complete >= len(PROMPTS) * 3 // 4,
      f"{complete} of {len(PROMPTS)}")
assert not any(valid(v, unfinished(PERSON)) for v in completions_of('{"name": "x", "age": -3'))

# Any object: complete where the model stopped; where max_tokens cut it (a 135M model at
# temperature 1 may write a string for hundreds of tokens), a prefix of one.
for stream in (False, True):
    text, finish = chat("Give me any JSON object.", stream=stream, temperature=1.0, seed=7,
                        max_tokens=200, response_format={"type": "json_object"})
    whole = finish == "stop" and isinstance(json.loads(text), dict)
    cut = finish == "length" and json_object_prefix(text)
    check(f"json_object stream={stream} ({finish})", whole or cut, text)
assert json_object_prefix('{"a": [1, {"b": "tex') and json_object_prefix('{"a"')
assert not json_object_prefix('{"a": }') and not json_object_prefix("[1, 2")

PHONE = r"\(\d{3}\) \d{3}-\d{4}"
for stream in (False, True):
    text, finish = completion("Call me at", stream=stream, temperature=1.0, seed=3, max_tokens=40,
                              extra_body={"structured_outputs": {"regex": PHONE}})
    check(f"regex (structured_outputs) stream={stream}", re.fullmatch(PHONE, text) is not None, repr(text))
    text, finish = chat("What is my phone number?", stream=stream, temperature=1.0, seed=4,
                        max_tokens=40, extra_body={"guided_regex": PHONE})
    check(f"regex (guided_regex) stream={stream}", re.fullmatch(PHONE, text) is not None, repr(text))

CHOICES = ["positive", "negative", "neutral"]
for stream in (False, True):
    text, finish = chat("The film was wonderful. Sentiment?", stream=stream, temperature=1.0, seed=5,
                        max_tokens=10, extra_body={"guided_choice": CHOICES})
    check(f"choice (guided_choice) stream={stream}", text in CHOICES, repr(text))
    text, finish = completion("Sentiment of 'awful food':", stream=stream, temperature=1.0, seed=6,
                              max_tokens=10, extra_body={"structured_outputs": {"choice": CHOICES}})
    check(f"choice (structured_outputs) stream={stream}", text in CHOICES, repr(text))

GRAMMAR = 'start: "SELECT " column " FROM " table\ncolumn: "name" | "age" | "*"\ntable: "users" | "orders"'
SQL = r"SELECT (name|age|\*) FROM (users|orders)"
for stream in (False, True):
    text, finish = completion("SQL:", stream=stream, temperature=1.0, seed=8, max_tokens=20,
                              extra_body={"structured_outputs": {"grammar": GRAMMAR}})
    check(f"grammar stream={stream}", re.fullmatch(SQL, text) is not None, repr(text))

# A greedy output the constraint allows is what the model says without it.
free, _ = completion("The capital of France is", temperature=0, max_tokens=8)
held, _ = completion("The capital of France is", temperature=0, max_tokens=8,
                     extra_body={"structured_outputs": {"regex": re.escape(free)}})
check("greedy output inside the constraint is unchanged", held == free, f"{free!r} vs {held!r}")
# Where the constraint forbids the greedy token, greedy takes the most likely token it allows:
# among the unconstrained top 20, the best one that starts one of the choices.
CITIES = ["London", "Berlin", " Madrid", " Rome"]
top = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0,
                                max_tokens=1, logprobs=20).choices[0].logprobs.top_logprobs[0]
allowed = sorted(((lp, t) for t, lp in top.items() if t and any(c.startswith(t) for c in CITIES)),
                 reverse=True)
check("the top 20 hold a token the choices allow", bool(allowed), str(top))
first = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0,
                                  max_tokens=1, logprobs=0,
                                  extra_body={"guided_choice": CITIES}).choices[0].logprobs.tokens[0]
check("greedy under a constraint takes the best token it allows", first == allowed[0][1],
      f"{first!r} vs {allowed[:3]}")
again, _ = completion("The capital of France is", temperature=0, max_tokens=8)
check("greedy output without a constraint is unchanged after constrained ones", again == free,
      f"{free!r} vs {again!r}")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 20},
            "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The time in a time zone",
        "parameters": {"type": "object", "properties": {
            "zone": {"type": "string", "minLength": 1, "maxLength": 12}},
            "required": ["zone"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]


def tool_calls(stream, **kw):
    """The calls (name, arguments) and the finish reason, whole or reassembled from a stream as
    the openai client's users do."""
    if not stream:
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **kw)
        calls = r.choices[0].message.tool_calls or []
        return [(c.function.name, c.function.arguments, c.id) for c in calls], r.choices[0].finish_reason
    calls, finish = {}, None
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True, **kw):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, ["", "", None])
                call[0] += (d.function.name or "") if d.function else ""
                call[1] += (d.function.arguments or "") if d.function else ""
                call[2] = call[2] or d.id
    return [tuple(calls[i]) for i in sorted(calls)], finish


# Greedy: sampled at temperature 1 this small model keeps adding calls and properties (the
# required schema, as vLLM builds it, allows more items and extra keys) past max_tokens.
for stream in (False, True):
    calls, finish = tool_calls(stream, tool_choice="required", temperature=0, max_tokens=200)
    ok = finish == "tool_calls" and len(calls) >= 1 and all(
        name in SCHEMAS and cid and jsonschema.validate(json.loads(args), SCHEMAS[name]) is None
        for name, args, cid in calls)
    check(f"tool_choice required stream={stream}", ok, f"finish={finish} {calls}")
    named = {"type": "function", "function": {"name": "get_time"}}
    calls, finish = tool_calls(stream, tool_choice=named, temperature=1.0, seed=12, max_tokens=200)
    ok = finish == "stop" and len(calls) == 1 and calls[0][0] == "get_time" and calls[0][2] and \
        jsonschema.validate(json.loads(calls[0][1]), SCHEMAS["get_time"]) is None
    check(f"tool_choice named stream={stream}", ok, f"finish={finish} {calls}")
# tool_choice auto, read by the server's hermes parser (--tool-call-parser hermes). This small
# model does not call tools on its own, so a regex holds it to the Hermes format: what the
# parser must then read back as a call, with the text before it as content.
CALL = r'Checking\.\n<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,10}", "unit": "celsius"\}\}\n</tool_call>'
for stream in (False, True):
    kw = dict(tool_choice="auto", temperature=1.0, seed=13, max_tokens=80,
              extra_body={"structured_outputs": {"regex": CALL}})
    if not stream:
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **kw)
        m = r.choices[0].message
        content, finish = m.content, r.choices[0].finish_reason
        calls = [(c.function.name, c.function.arguments, c.id) for c in m.tool_calls or []]
    else:
        content, finish, acc = "", None, {}
        for chunk in client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True, **kw):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                content += c.delta.content or ""
                for d in c.delta.tool_calls or []:
                    call = acc.setdefault(d.index, ["", "", None])
                    call[0] += d.function.name or ""
                    call[1] += d.function.arguments or ""
                    call[2] = call[2] or d.id
        calls = [tuple(acc[i]) for i in sorted(acc)]
    ok = finish == "tool_calls" and content == "Checking.\n" and len(calls) == 1 and \
        calls[0][0] == "get_weather" and calls[0][2] and \
        jsonschema.validate(json.loads(calls[0][1]), SCHEMAS["get_weather"]) is None
    check(f"tool_choice auto (hermes) stream={stream}", ok, f"finish={finish} content={content!r} {calls}")
r = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=16)
check("tool_choice auto without a call is content", not r.choices[0].message.tool_calls
      and r.choices[0].message.content and r.choices[0].finish_reason in ("length", "stop"),
      repr(r.choices[0].message))

for field, value, param in [
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}, "response_format"),
    ("guided_regex", "[0-9", "guided_regex"),
    ("structured_outputs", {"grammar": "start: missing_rule"}, "structured_outputs"),
    ("structured_outputs", {"regex": "a", "choice": ["a"]}, "structured_outputs"),
]:
    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body={field: value})
        check(f"invalid {field} is refused", False, "no error")
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(f"invalid {field} is refused", body.get("param") == param, str(e.body))
print("all structured-output checks passed")
