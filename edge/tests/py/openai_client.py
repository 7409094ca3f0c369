"""The official `openai` Python client against `edge serve`: list models, one completion, one
stream, and a wrong key.

Usage: openai_client.py BASE_URL API_KEY
Prints one JSON object with what the client parsed.
"""

import json
import sys

import openai
from openai import OpenAI


def main():
    base, key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
    models = [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(
        model=models[0], messages=messages, max_tokens=12, temperature=0
    )
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=models[0],
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    bad = OpenAI(base_url=base, api_key="not-the-key", max_retries=0, timeout=60)
    try:
        bad.models.list()
        bad_status = 200
    except openai.AuthenticationError as e:
        bad_status = e.status_code
    print(
        json.dumps(
            {
                "models": models,
                "model": r.model,
                "text": r.choices[0].message.content,
                "finish_reason": r.choices[0].finish_reason,
                "usage": r.usage.model_dump(),
                "stream_text": "".join(pieces),
                "stream_finish_reason": finish,
                "stream_usage": usage,
                "bad_key_status": bad_status,
            }
        )
    )


if __name__ == "__main__":
    main()
