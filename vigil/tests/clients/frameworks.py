"""The frameworks people wire to an OpenAI-compatible server, each on its default path for
tool calling or structured output, extracting one small pydantic model from Vigil.

Usage: frameworks.py BASE_URL MODEL FRAMEWORK, with FRAMEWORK's packages (and nothing else of
the others', whose pins conflict) on PYTHONPATH. Prints "ok FRAMEWORK <the object>" and exits 0
when the framework returned a valid object; a framework's error ends it with its traceback.

Each call asks for greedy output with a bound on tokens: the point is that the framework's own
request and reading of the answer work, not what a 135M-parameter model knows.
"""

import json
import os
import sys

from pydantic import BaseModel, Field

BASE, MODEL, FRAMEWORK = sys.argv[1], sys.argv[2], sys.argv[3]
API = BASE.rstrip("/") + "/v1"
PROMPT = "Extract the person: Maria Lopez is 31 years old and lives in Madrid."
SETTINGS = {"temperature": 0, "max_tokens": 200}


class City(BaseModel):
    name: str = Field(max_length=24)


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=150)
    # A nested model: pydantic puts it in `$defs` and refers to it with `$ref`.
    city: City


def instructor_tools():
    import instructor
    from openai import OpenAI

    client = instructor.from_openai(OpenAI(base_url=API, api_key="none"))
    assert client.mode == instructor.Mode.TOOLS, client.mode
    return client.chat.completions.create(
        model=MODEL,
        response_model=Person,
        messages=[{"role": "user", "content": PROMPT}],
        max_retries=0,
        **SETTINGS,
    )


def langchain_any():
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=API, api_key="none", **SETTINGS)
    message = llm.bind_tools([Person], tool_choice="any").invoke(PROMPT)
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "Person", call
    return Person.model_validate(call["args"])


def litellm_required():
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    tool = {
        "type": "function",
        "function": {
            "name": "Person",
            "description": Person.__doc__,
            "parameters": Person.model_json_schema(),
        },
    }
    response = litellm.completion(
        model="openai/" + MODEL,
        api_base=API,
        api_key="none",
        messages=[{"role": "user", "content": PROMPT}],
        tools=[tool],
        tool_choice="required",
        **SETTINGS,
    )
    calls = response.choices[0].message.tool_calls
    assert calls, response
    assert calls[0].function.name == "Person", calls
    return Person.model_validate(json.loads(calls[0].function.arguments))


def pydantic_ai_output():
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=API, api_key="none"))
    agent = Agent(model, output_type=Person, model_settings=SETTINGS)
    return agent.run_sync(PROMPT).output


RUN = {
    "instructor": instructor_tools,
    "langchain": langchain_any,
    "litellm": litellm_required,
    "pydantic-ai": pydantic_ai_output,
}

person = RUN[FRAMEWORK]()
assert isinstance(person, Person), person
print(f"ok {FRAMEWORK} {person.model_dump_json()}")
