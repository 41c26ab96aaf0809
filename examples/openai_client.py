"""Talks to `mistral-hub serve` with the official `openai` client.

Start a server in one shell (the demo preset ships with the package):

    mistral-hub serve mistral_hub_demo --backend jax

then run this script in another:

    pip install openai
    python examples/openai_client.py
    python examples/openai_client.py --base-url http://127.0.0.1:8000/v1 \
        --model mistral_0.3_instruct_7b_en --tools

It lists the served model, completes a prompt, chats (whole and streamed,
with the same seed, so both give the same text) and reads log-probabilities.
With `--tools` (a model with a v3, v7 or Tekken chat template, e.g. Mistral
7B Instruct v0.3) it also runs one function-calling round trip: the model
calls `get_weather`, the script runs it and sends the result back.
"""

import argparse
import json

import openai

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def get_weather(city):
    return {"city": city, "temperature_celsius": 21, "sky": "clear"}


def function_calling(client, model):
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    try:
        response = client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER_TOOL], max_tokens=128, temperature=0
        )
    except openai.BadRequestError as error:  # e.g. a v1 chat template
        print(f"[tools] not supported by this model: {error.body['message']}")
        return
    message = response.choices[0].message
    if not message.tool_calls:
        print(f"[tools] the model answered without a tool call: {message.content!r}")
        return
    messages.append(message.model_dump(exclude_none=True))
    for call in message.tool_calls:
        arguments = json.loads(call.function.arguments)
        print(f"[tools] the model calls {call.function.name}({arguments})")
        result = get_weather(**arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=128)
    print(f"[tools] answer: {answer.choices[0].message.content}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="mistral_hub_demo", help="The served model name.")
    parser.add_argument("--api-key", default="unused", help="The server's --api-key, if any.")
    parser.add_argument("--tools", action="store_true", help="Also try function calling.")
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)

    print("[models]", [model.id for model in client.models.list().data])

    completion = client.completions.create(
        model=args.model, prompt="def fibonacci(n):", max_tokens=32, temperature=0
    )
    print(
        f"[completion] {completion.choices[0].text!r} ({completion.usage.completion_tokens} tokens)"
    )

    chat = dict(
        model=args.model,
        messages=[{"role": "user", "content": "What does the os module do?"}],
        max_tokens=48,
        temperature=0.7,
        seed=1,
    )
    whole = client.chat.completions.create(**chat).choices[0].message.content
    print(f"[chat] {whole!r}")
    print("[chat, streamed] ", end="")
    pieces = []
    for chunk in client.chat.completions.create(**chat, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            print(chunk.choices[0].delta.content, end="", flush=True)
    print(f"\n[chat] streamed text equals the whole reply: {''.join(pieces) == whole}")

    scored = client.chat.completions.create(
        model=args.model,
        messages=chat["messages"],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    for entry in scored.choices[0].logprobs.content:
        alternatives = ", ".join(f"{t.token!r} {t.logprob:.2f}" for t in entry.top_logprobs)
        print(f"[logprobs] {entry.token!r} {entry.logprob:.2f} (top: {alternatives})")

    if args.tools:
        function_calling(client, args.model)


if __name__ == "__main__":
    main()
