"""Real OpenAI clients against aigw's model API: the official `openai` SDK (sync and async,
streamed and whole, a tool round trip, its exceptions) and LiteLLM with a `custom_openai/<name>`
model and `api_base` at aigw, as GitLab's Duo Workflow Service calls its model.

Run by `make clients` (tests/src/bin/clients-test.rs starts aigw and the mock model server and
sets AIGW_BASE_URL, AIGW_KEY and AIGW_MODELS: one named model per provider format the mock
speaks). Exits non-zero on the first failed check, printing which.
"""

import asyncio
import json
import os
import sys

import litellm
import openai

BASE_URL = os.environ["AIGW_BASE_URL"]
KEY = os.environ["AIGW_KEY"]
MODELS = os.environ["AIGW_MODELS"].split(",")
ARGUMENTS = {"project_id": 1000, "work_item_iid": 42}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_work_item",
            "description": "Read a work item.",
            "parameters": {
                "type": "object",
                "properties": {"project_id": {"type": "integer"}, "work_item_iid": {"type": "integer"}},
                "required": ["project_id", "work_item_iid"],
            },
        },
    }
]
QUESTION = [{"role": "system", "content": "You help."}, {"role": "user", "content": "What is #42?"}]
checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


def tool_result(call_id):
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"state": "OPEN"})}


def sdk_whole_and_tools(client, model):
    answer = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS, temperature=0.0, max_tokens=512)
    choice = answer.choices[0]
    check(choice.finish_reason == "tool_calls", f"{model}: finish_reason {choice.finish_reason}")
    call = choice.message.tool_calls[0]
    check(call.function.name == "get_work_item", f"{model}: tool name {call.function.name}")
    check(json.loads(call.function.arguments) == ARGUMENTS, f"{model}: arguments {call.function.arguments}")
    check(answer.usage is not None and answer.usage.prompt_tokens > 0, f"{model}: usage {answer.usage}")
    # The SDK's own message object goes back into the history, as agents do.
    history = QUESTION + [choice.message.model_dump(exclude_none=True), tool_result(call.id)]
    final = client.chat.completions.create(model=model, messages=history, tools=TOOLS)
    check(final.choices[0].finish_reason == "stop", f"{model}: second turn finish {final.choices[0].finish_reason}")
    check(final.choices[0].message.content == "Issue 42 is open.", f"{model}: second turn {final.choices[0].message}")


def sdk_stream(client, model):
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    calls, finish, usage = {}, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = piece.id or call["id"]
                if piece.function is not None:
                    call["name"] = piece.function.name or call["name"]
                    call["arguments"] += piece.function.arguments or ""
    check(list(calls) == [0], f"{model}: streamed call indices {list(calls)}")
    check(calls[0]["id"] and calls[0]["name"] == "get_work_item", f"{model}: streamed call {calls[0]}")
    check(json.loads(calls[0]["arguments"]) == ARGUMENTS, f"{model}: streamed arguments {calls[0]['arguments']}")
    check(finish == "tool_calls", f"{model}: streamed finish {finish}")
    check(usage is not None and usage.completion_tokens > 0, f"{model}: streamed usage {usage}")
    # The SDK's stream helper assembles the same call.
    with client.chat.completions.stream(model=model, messages=QUESTION, tools=TOOLS) as helper:
        final = helper.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    check(json.loads(call.function.arguments) == ARGUMENTS, f"{model}: stream helper {call}")


async def sdk_async(model):
    client = openai.AsyncOpenAI(base_url=BASE_URL, api_key=KEY)
    text = ""
    async for chunk in await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say it."}], stream=True
    ):
        for choice in chunk.choices:
            text += choice.delta.content or ""
    check(text == "Issue 42 is open.", f"{model}: async stream text {text!r}")
    whole = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say it."}])
    check(whole.choices[0].message.content == "Issue 42 is open.", f"{model}: async whole {whole}")
    await client.close()


def sdk_errors(client, model):
    try:
        openai.OpenAI(base_url=BASE_URL, api_key="sk-not-a-key").chat.completions.create(model=model, messages=QUESTION)
        check(False, "an unknown key was accepted")
    except openai.AuthenticationError as error:
        check(error.code == "invalid_api_key", f"unknown key: code {error.code}")
    try:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
        check(False, "an unknown model was accepted")
    except openai.NotFoundError as error:
        check(error.code == "model_not_found", f"unknown model: code {error.code}")
    try:
        client.chat.completions.create(model=model, messages=QUESTION, n=2)
        check(False, "n=2 was accepted")
    except openai.BadRequestError as error:
        check(error.param == "n", f"n=2: param {error.param}")
    listed = [m.id for m in client.models.list()]
    check(set(MODELS) <= set(listed), f"models.list {listed}")


def sdk_embeddings(client, model):
    # The SDK asks for base64 unless told otherwise and decodes it: both ways give the same floats.
    default = client.embeddings.create(model=model, input=["fn main() {}", "a query"])
    floats = client.embeddings.create(model=model, input=["fn main() {}", "a query"], encoding_format="float")
    check(len(default.data) == 2 and len(default.data[0].embedding) > 0, f"{model}: embeddings {default}")
    check(default.data[1].embedding == floats.data[1].embedding, f"{model}: base64 and float embeddings differ")
    shortened = client.embeddings.create(model=model, input="x", dimensions=4)
    check(len(shortened.data[0].embedding) == 4, f"{model}: dimensions {shortened.data[0]}")
    # LiteLLM embeds through its `openai/` provider (it has no embeddings route for `custom_openai/`).
    through = litellm.embedding(model=f"openai/{model}", api_base=BASE_URL, api_key=KEY, input=["a query"])
    check(through.data[0]["embedding"] == floats.data[1].embedding, f"litellm {model}: embeddings {through.data[0]}")


def litellm_as_dws(model):
    # GitLab's Duo Workflow Service names the model `custom_openai/<name>` with `api_base` and the key.
    name = f"custom_openai/{model}"
    answer = litellm.completion(
        model=name, api_base=BASE_URL, api_key=KEY, messages=QUESTION, tools=TOOLS, temperature=0.0, max_tokens=512
    )
    call = answer.choices[0].message.tool_calls[0]
    check(json.loads(call.function.arguments) == ARGUMENTS, f"litellm {model}: arguments {call.function.arguments}")
    history = QUESTION + [
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        tool_result(call.id),
    ]
    final = litellm.completion(model=name, api_base=BASE_URL, api_key=KEY, messages=history, tools=TOOLS)
    check(final.choices[0].message.content == "Issue 42 is open.", f"litellm {model}: second turn")
    chunks = list(
        litellm.completion(
            model=name,
            api_base=BASE_URL,
            api_key=KEY,
            messages=QUESTION,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    rebuilt = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    call = rebuilt.choices[0].message.tool_calls[0]
    check(json.loads(call.function.arguments) == ARGUMENTS, f"litellm {model}: streamed arguments {call}")


def main():
    client = openai.OpenAI(base_url=BASE_URL, api_key=KEY)
    for model in MODELS:
        sdk_whole_and_tools(client, model)
        sdk_stream(client, model)
        asyncio.run(sdk_async(model))
        litellm_as_dws(model)
    sdk_errors(client, MODELS[0])
    sdk_embeddings(client, MODELS[0])
    print(f"clients: {checks} checks passed for {', '.join(MODELS)} (openai {openai.__version__}, litellm)")


main()
