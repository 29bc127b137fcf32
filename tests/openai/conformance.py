"""`selfroute serve` through the official `openai` Python SDK: every request parameter the server
honours, streamed and not; every refusal as the SDK's BadRequestError naming its `param`; and the
413, 503, 502 and 401 answers as the SDK's typed errors.

Run by `cargo xtask test` (xtask/src/openai_conformance.rs), once against the model server and
once against a `selfroute serve --upstream` proxy in front of it: the same answers must come back
through the proxy. The servers are started by the driver with small limits (see there).
"""

import argparse
import sys
import threading
import time
import traceback
import urllib.request
import json

import openai
from openai import OpenAI

COUNT = "Count from 1 to 10, separated by commas."
STORY = "Write a long story about a cat and a dog."
# <|endoftext|> and <|im_end|> in SmolLM2's vocabulary: banning them makes an answer run to its limit.
NO_END = {"0": -100, "2": -100}

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def user(text):
    return [{"role": "user", "content": text}]


def check(condition, message):
    if not condition:
        raise AssertionError(message)


class Context:
    def __init__(self, args):
        self.args = args
        self.client = OpenAI(base_url=args.base_url, api_key=args.key, max_retries=0, timeout=120)

    def create(self, **kwargs):
        kwargs.setdefault("model", "any")
        return self.client.chat.completions.create(**kwargs)

    def stream(self, **kwargs):
        """The chunks of a streamed answer, as a list."""
        kwargs.setdefault("model", "any")
        return list(self.client.chat.completions.create(stream=True, **kwargs))


def streamed_text(chunks, index=0):
    return "".join(
        c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == index
    )


def finishes(chunks, index=0):
    return [c.finish_reason for chunk in chunks for c in chunk.choices if c.index == index and c.finish_reason]


@test
def plain_and_streamed_answers_agree(ctx):
    plain = ctx.create(messages=user(COUNT), max_tokens=12)
    check(plain.object == "chat.completion", plain)
    check(plain.choices[0].message.role == "assistant", plain)
    check(plain.model == ctx.args.model_id, f"the served model answers: {plain.model}")
    chunks = ctx.stream(messages=user(COUNT), max_tokens=12)
    check(streamed_text(chunks) == plain.choices[0].message.content, "greedy stream equals the answer")
    check(finishes(chunks) == [plain.choices[0].finish_reason], finishes(chunks))


@test
def stop_strings_end_the_answer_and_are_not_shown(ctx):
    full = ctx.create(messages=user(COUNT), max_tokens=16).choices[0].message.content
    stop = full[4:8]  # several digit, comma and space tokens
    expected = full[: full.find(stop)]
    for stops in (stop, [stop, "never seen"]):
        plain = ctx.create(messages=user(COUNT), max_tokens=16, stop=stops)
        check(plain.choices[0].message.content == expected, (stops, plain.choices[0].message.content))
        check(plain.choices[0].finish_reason == "stop", plain)
        chunks = ctx.stream(messages=user(COUNT), max_tokens=16, stop=stops)
        check(streamed_text(chunks) == expected, (stops, streamed_text(chunks)))
        check(finishes(chunks) == ["stop"], finishes(chunks))


@test
def n_gives_independent_indexed_choices(ctx):
    kwargs = dict(messages=user("Name a colour."), max_tokens=5, n=3, temperature=1.5, seed=11)
    plain = ctx.create(**kwargs)
    check([c.index for c in plain.choices] == [0, 1, 2], plain.choices)
    texts = [c.message.content for c in plain.choices]
    check(len(set(texts)) > 1, f"independent samples: {texts}")
    chunks = ctx.stream(**kwargs)
    check([streamed_text(chunks, i) for i in range(3)] == texts, "streamed choices equal the plain ones")
    for i in range(3):
        check(len(finishes(chunks, i)) == 1, f"choice {i} finishes once")


@test
def seed_reproduces_a_sampled_answer(ctx):
    kwargs = dict(messages=user("Tell me a short story."), max_tokens=8, temperature=1.2)
    a = ctx.create(seed=5, **kwargs).choices[0].message.content
    b = ctx.create(seed=5, **kwargs).choices[0].message.content
    c = ctx.create(seed=6, **kwargs).choices[0].message.content
    check(a == b, (a, b))
    check(a != c, f"another seed, another sample: {a!r}")
    check(streamed_text(ctx.stream(seed=5, **kwargs)) == a, "streamed with the same seed")


@test
def max_tokens_under_both_names(ctx):
    for name in ("max_tokens", "max_completion_tokens"):
        plain = ctx.create(messages=user("Hi"), logit_bias=NO_END, **{name: 3})
        check(plain.usage.completion_tokens == 3, (name, plain.usage))
        check(plain.choices[0].finish_reason == "length", plain)
        chunks = ctx.stream(messages=user("Hi"), logit_bias=NO_END, **{name: 3})
        check(finishes(chunks) == ["length"], finishes(chunks))


@test
def temperature_and_top_p(ctx):
    greedy = ctx.create(messages=user(STORY), max_tokens=8).choices[0].message.content
    check(ctx.create(messages=user(STORY), max_tokens=8, temperature=0).choices[0].message.content == greedy, "0 is greedy")
    # top_p 0 keeps only the most likely token, whatever the temperature.
    check(
        ctx.create(messages=user(STORY), max_tokens=8, temperature=2, top_p=0).choices[0].message.content == greedy,
        "top_p 0 is greedy",
    )
    hot = [ctx.create(messages=user(STORY), max_tokens=8, temperature=1.8, seed=s).choices[0].message.content for s in (1, 2)]
    check(any(h != greedy for h in hot), "a high temperature samples")
    chunks = ctx.stream(messages=user(STORY), max_tokens=8, temperature=1.8, top_p=0.9, seed=1)
    plain = ctx.create(messages=user(STORY), max_tokens=8, temperature=1.8, top_p=0.9, seed=1)
    check(streamed_text(chunks) == plain.choices[0].message.content, "sampled stream equals the answer")


@test
def presence_and_frequency_penalties(ctx):
    greedy = ctx.create(messages=user(STORY), max_tokens=24).choices[0].message.content
    kwargs = dict(messages=user(STORY), max_tokens=24, presence_penalty=1.5, frequency_penalty=1.0)
    plain = ctx.create(**kwargs).choices[0].message.content
    check(plain != greedy, "the penalties change the answer")
    check(streamed_text(ctx.stream(**kwargs)) == plain, "streamed with penalties")
    # Negative penalties favour repeats.
    repeats = ctx.create(messages=user(STORY), max_tokens=24, frequency_penalty=-2).choices[0].message.content
    check(repeats != greedy, "a negative penalty changes it too")


@test
def logit_bias_bans_and_forces(ctx):
    short = ctx.create(messages=user("Hi"), max_tokens=40)
    check(short.choices[0].finish_reason == "stop", "the model ends on its own")
    banned = ctx.create(messages=user("Hi"), max_tokens=12, logit_bias=NO_END)
    check(banned.choices[0].finish_reason == "length", "banned end tokens: it runs to the limit")
    # +100 on one token makes it the only choice.
    forced = ctx.create(messages=user("Hi"), max_tokens=3, logit_bias={"28": 100})
    chunks = ctx.stream(messages=user("Hi"), max_tokens=3, logit_bias={"28": 100})
    text = forced.choices[0].message.content
    check(len(text) > 0 and text == text[0] * len(text), f"one token repeated: {text!r}")
    check(streamed_text(chunks) == text, "streamed with a bias")


@test
def logprobs_in_the_openai_shape(ctx):
    kwargs = dict(messages=user("Name a colour."), max_tokens=6, logprobs=True, top_logprobs=3)
    plain = ctx.create(**kwargs)
    entries = plain.choices[0].logprobs.content
    check(len(entries) == plain.usage.completion_tokens, (len(entries), plain.usage))
    check("".join(e.token for e in entries) == plain.choices[0].message.content, "the tokens spell the answer")
    for e in entries:
        check(e.logprob <= 0, e)
        check(bytes(e.bytes) == e.token.encode(), e)
        check(len(e.top_logprobs) == 3, e)
        tops = [t.logprob for t in e.top_logprobs]
        check(tops == sorted(tops, reverse=True), tops)
        # Greedy: the token taken is the most likely one.
        check(e.top_logprobs[0].token == e.token and abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6, e)
        check(sum(2.718281828 ** t for t in tops) <= 1.0001, tops)
    streamed = [
        entry for chunk in ctx.stream(**kwargs) for c in chunk.choices if c.logprobs for entry in c.logprobs.content
    ]
    check([e.token for e in streamed] == [e.token for e in entries], "streamed chunks carry the same entries")
    check(all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(streamed, entries)), "the same numbers")
    only = ctx.create(messages=user("Hi"), max_tokens=2, logprobs=True)
    check(all(e.top_logprobs == [] for e in only.choices[0].logprobs.content), "no alternatives unless asked")
    none = ctx.create(messages=user("Hi"), max_tokens=2)
    check(none.choices[0].logprobs is None, "no log-probs unless asked")


@test
def usage_is_streamed_only_when_asked(ctx):
    chunks = ctx.stream(messages=user("Hi"), max_tokens=4, stream_options={"include_usage": True})
    last = chunks[-1]
    check(last.choices == [] and last.usage is not None, last)
    check(last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens, last.usage)
    check(all(c.usage is None for c in chunks[:-1]), "only the last chunk has usage")
    chunks = ctx.stream(messages=user("Hi"), max_tokens=4)
    check(all(c.usage is None for c in chunks), "no usage unless asked")


@test
def what_current_clients_send_is_accepted(ctx):
    parts = ctx.create(
        messages=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "Name a"}, {"type": "text", "text": "colour."}]},
        ],
        max_tokens=4,
        response_format={"type": "text"},
        modalities=["text"],
        user="someone",
        store=False,
        metadata={"k": "v"},
        extra_body={"a_field_from_the_future": 1},
    )
    check(parts.choices[0].message.content, parts)
    # No model at all: the server answers with the one it serves.
    raw = ctx.client.post(
        "/chat/completions",
        body={"messages": user("Hi"), "max_tokens": 2},
        cast_to=openai.types.chat.ChatCompletion,
    )
    check(raw.model == ctx.args.model_id, raw.model)


REFUSED = [
    ("tools", dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])),
    ("tool_choice", dict(tool_choice="required")),
    ("functions", dict(functions=[{"name": "f", "parameters": {}}])),
    ("function_call", dict(function_call="auto")),
    ("parallel_tool_calls", dict(parallel_tool_calls=True)),
    ("response_format", dict(response_format={"type": "json_object"})),
    ("audio", dict(audio={"voice": "alloy", "format": "wav"}, modalities=["text"])),
    ("modalities", dict(modalities=["text", "audio"])),
    ("n", dict(n=5)),
    ("max_tokens", dict(max_tokens=65)),
    ("max_completion_tokens", dict(max_completion_tokens=0)),
    ("temperature", dict(temperature=3)),
    ("top_p", dict(top_p=1.5)),
    ("presence_penalty", dict(presence_penalty=2.5)),
    ("frequency_penalty", dict(frequency_penalty=-2.5)),
    ("stop", dict(stop=["a", "b", "c", "d", "e"])),
    ("logit_bias", dict(logit_bias={"99999999": 1})),
    ("logit_bias", dict(logit_bias={"5": 150})),
    ("top_logprobs", dict(logprobs=True, top_logprobs=21)),
    ("top_logprobs", dict(top_logprobs=2)),
    ("reasoning_effort", dict(reasoning_effort="low")),
    ("messages.[0].content.[1].type", dict(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}])),
    ("messages.[0].content.[0].type", dict(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]}])),
    ("messages.[1].role", dict(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "b", "tool_call_id": "1"}])),
    ("messages", dict(messages=[])),
]


@test
def every_refusal_is_a_bad_request_naming_its_param(ctx):
    for stream in (False, True):
        for param, kwargs in REFUSED:
            kwargs = dict(kwargs)
            kwargs.setdefault("messages", user("Hi"))
            kwargs.setdefault("max_tokens", 2)
            if param in ("max_completion_tokens",):
                kwargs.pop("max_tokens")
            try:
                if stream:
                    ctx.stream(**kwargs)
                else:
                    ctx.create(**kwargs)
            except openai.BadRequestError as e:
                check(e.status_code == 400, e)
                check(e.param == param, f"{param}: got param {e.param!r} ({e.message})")
                check(e.type == "invalid_request_error", e.type)
                check(e.code, f"{param}: a code")
            else:
                raise AssertionError(f"{param} (stream={stream}) was accepted")
    # stream_options without stream.
    try:
        ctx.create(messages=user("Hi"), max_tokens=2, stream_options={"include_usage": True})
        raise AssertionError("stream_options without stream was accepted")
    except openai.BadRequestError as e:
        check(e.param == "stream_options", e.param)
    # Named in the message too.
    try:
        ctx.create(messages=REFUSED[21][1]["messages"], max_tokens=2)
    except openai.BadRequestError as e:
        check("image_url" in e.message, e.message)


@test
def a_body_over_the_limit_is_a_413(ctx):
    try:
        ctx.create(messages=user("x" * (ctx.args.max_body_bytes + 10)), max_tokens=2)
        raise AssertionError("accepted")
    except openai.APIStatusError as e:
        check(type(e) is openai.APIStatusError, f"no narrower type for 413: {type(e)}")
        check(e.status_code == 413, e.status_code)
        check(e.code == "request_too_large", e.code)


@test
def a_missing_or_wrong_key_is_an_authentication_error(ctx):
    for key in ("wrong-key", ""):
        client = OpenAI(base_url=ctx.args.base_url, api_key=key or "unset", max_retries=0)
        if not key:
            client = client.with_options(default_headers={"Authorization": ""})
        try:
            client.chat.completions.create(model="any", messages=user("Hi"), max_tokens=2)
            raise AssertionError(f"key {key!r} was accepted")
        except openai.AuthenticationError as e:
            check(e.status_code == 401 and e.code == "invalid_api_key", (e.status_code, e.code))


def health_queued(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)["queued"]


@test
def a_full_queue_is_a_503(ctx):
    # The model server runs with --max-queue 1: one answer generating, one waiting, the next refused.
    long = ctx.client.chat.completions.create(
        model="any", messages=user(STORY), max_tokens=64, logit_bias=NO_END, stream=True
    )
    next(iter(long))  # generating now
    waiting = {}

    def wait():
        try:
            waiting["answer"] = ctx.create(messages=user("Hi"), max_tokens=1)
        except Exception as e:  # noqa: BLE001 - reported below
            waiting["error"] = e

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.time() + 20
    while health_queued(ctx.args.health_url) < 1:
        check(time.time() < deadline, "the second request never queued")
        time.sleep(0.05)
    try:
        ctx.create(messages=user("Hi"), max_tokens=1)
        raise AssertionError("a third request was accepted")
    except openai.InternalServerError as e:
        check(e.status_code == 503, e.status_code)
        check(e.response.headers.get("retry-after") == "1", e.response.headers)
    finally:
        long.close()  # the client leaves: its generation stops
        waiter.join(60)
    check("answer" in waiting, f"the queued request was answered: {waiting}")


@test
def an_unreachable_upstream_is_a_server_error(ctx):
    client = OpenAI(base_url=ctx.args.dead_url, api_key="k", max_retries=0)
    try:
        client.chat.completions.create(model="any", messages=user("Hi"), max_tokens=2)
        raise AssertionError("accepted")
    except openai.InternalServerError as e:
        check(e.status_code == 502, e.status_code)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--health-url", required=True, help="the model server's /health")
    parser.add_argument("--dead-url", required=True, help="a proxy whose upstream is down")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--max-body-bytes", type=int, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("only", nargs="*")
    args = parser.parse_args()
    ctx = Context(args)
    passed = failed = 0
    for fn in TESTS:
        if args.only and fn.__name__ not in args.only:
            continue
        started = time.time()
        try:
            fn(ctx)
            passed += 1
            print(f"ok   {args.label} {fn.__name__} ({time.time() - started:.1f} s)", flush=True)
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL {args.label} {fn.__name__}", flush=True)
            traceback.print_exc()
    print(f"openai {openai.__version__} {args.label}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
