"""Token-exact transcripts: kept turns go back to the server as the ids it generated (issue 16).

The scripted server generates the ids a test gives it (`Turn.ids`), split the way a real model may sample
them rather than the way the tokenizer would, and simulates the radix cache by longest common token prefix,
so the cache effect of sending text versus ids shows here as it does on the GPU.
"""

from __future__ import annotations

from qwq_agent.agent.chat_format import render, render_segments
from qwq_agent.agent.clients import NO_RETRY, SGLangClient
from qwq_agent.agent.events import ModelCall, Warning_
from qwq_agent.agent.exact_tokens import TokenSpan, encode_segments, exact_output_ids, segment_text
from qwq_agent.agent.loop import Agent, AgentConfig
from qwq_agent.agent.messages import Message
from qwq_agent.agent.replay import ReplayModel
from qwq_agent.agent.tokenizer import IM_END, get_tokenizer
from qwq_agent.agent.trace import read_trace
from qwq_agent.testing._tokens import common_prefix_len
from qwq_agent.testing.helpers import add, call
from qwq_agent.testing.scripted_server import ScriptedModelServer, Turn

TOK = get_tokenizer()


def sampled_ids(reasoning: str, rest: str) -> list[int]:
    """Ids a model could have sampled for reasoning + rest: the reasoning one character per token.

    They decode to the same text as the tokenizer's own encoding but are not that encoding, as with a
    model that wrote "h", "e", "l", "l", "o" where the tokenizer has "hello".
    """
    ids = [i for ch in reasoning for i in TOK.encode(ch)] + TOK.encode(rest)
    assert TOK.decode(ids) == reasoning + rest and ids != TOK.encode(reasoning + rest)
    return ids


def conversation() -> list[Message]:
    first_raw = "I should add them.\n</think>\n\n" + call("add", a=2, b=3)
    first_ids = sampled_ids("I should add them.", "\n</think>\n\n" + call("add", a=2, b=3))
    second_raw = "It is 5.\n</think>\n\nThe sum is 5."
    return [
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is 2 + 3?"),
        Message(role="assistant", reasoning="I should add them.", raw=first_raw, token_ids=first_ids),
        Message(role="tool", name="add", content="5"),
        # canonical ids (what the tokenizer itself gives), as a trained model mostly samples
        Message(role="assistant", content="The sum is 5.", raw=second_raw, token_ids=TOK.encode(second_raw)),
        Message(role="user", content="And 3 + 4?"),
    ]


def test_text_and_id_paths_render_the_same_conversation():
    messages = conversation()
    text = render(messages, [add.spec], keep_reasoning=True)
    segments = render_segments(messages, [add.spec], keep_reasoning=True)
    assert "".join(segment_text(s) for s in segments) == text
    spans = [s for s in segments if isinstance(s, TokenSpan)]
    assert [list(s.ids) for s in spans] == [messages[2].token_ids, messages[4].token_ids]

    ids = encode_segments(segments)
    assert TOK.decode(ids) == text
    # Where the server's ids differ from re-tokenizing the text, the id path keeps the server's.
    canonical = TOK.encode(text)
    assert ids != canonical
    before = encode_segments(segments[: segments.index(spans[0])])
    kept = messages[2].token_ids or []
    assert ids[: len(before)] == canonical[: len(before)]  # the prompt that asked for the turn
    assert TOK.decode(before).endswith("<|im_start|>assistant\n<think>\n")
    assert ids[len(before) : len(before) + len(kept)] == kept
    assert common_prefix_len(ids, canonical) < len(before) + len(kept)
    # A conversation whose kept ids are all canonical encodes to exactly the text path's ids.
    plain = [m.model_copy(update={"token_ids": TOK.encode(m.raw)}) if m.raw else m for m in messages]
    assert encode_segments(render_segments(plain, [add.spec], keep_reasoning=True)) == canonical


def test_turns_without_ids_edited_turns_and_dropped_reasoning_fall_back_to_text():
    messages = conversation()
    # Edited history: the ids no longer spell the raw text, so the turn is tokenized as text.
    edited = list(messages)
    edited[2] = messages[2].model_copy(update={"raw": messages[2].raw.replace("add them", "sum them")})  # type: ignore[union-attr]
    segments = render_segments(edited, [add.spec], keep_reasoning=True)
    assert [list(s.ids) for s in segments if isinstance(s, TokenSpan)] == [messages[4].token_ids]
    assert "".join(segment_text(s) for s in segments) == render(edited, [add.spec], keep_reasoning=True)
    # An old trace or the OpenAI API: no ids at all.
    bare = [m.model_copy(update={"token_ids": None}) for m in messages]
    assert all(isinstance(s, str) for s in render_segments(bare, [add.spec], keep_reasoning=True))
    # With reasoning dropped the history is not what the model wrote: nothing is spliced.
    dropped = render_segments(messages, [add.spec], keep_reasoning=False)
    assert all(isinstance(s, str) for s in dropped)
    assert "".join(dropped) == render(messages, [add.spec])  # type: ignore[arg-type]


def test_kept_ids_drop_the_stop_token_and_follow_a_stop_string_cut():
    raw = "thinking\n</think>\n\nanswer"
    ids = sampled_ids("thinking", "\n</think>\n\nanswer")
    # SGLang reports the EOS it stopped on; the history's <|im_end|> comes from the template instead.
    assert exact_output_ids(raw, [*ids, IM_END]) == ids
    # A stop string trimmed from the text: the server's ids that spell the kept text are kept, the rest goes.
    cut = exact_output_ids(raw[: raw.index("answer")], [*ids, IM_END])
    assert cut is not None and cut == ids[: len(cut)] and TOK.decode(cut) == raw[: raw.index("answer")]
    # Text appended after the server's output (a scripted suffix) is tokenized and joined on.
    longer = exact_output_ids(raw + " more", ids)
    assert longer is not None and longer[: len(ids)] == ids and TOK.decode(longer) == raw + " more"
    # Ids the server shows as nothing (special tokens it skips, padded vocabulary rows that random weights
    # sample) or as U+FFFD (half a character) stay: they are what the model's context held.
    odd = [*ids[:3], 151646, 152000, 127, *ids[3:]]  # 127 is the byte 0xC3 alone
    shown = "thi\ufffd" + raw[3:]
    assert exact_output_ids(shown, odd) == odd
    # No ids reported: unknown, the turn goes as text.
    assert exact_output_ids(raw, []) is None


async def test_loop_with_kept_ids_prefills_only_new_tokens(tmp_path):
    """Per turn, uncached tokens == tokens new to the server; the text path re-prefills the reasoning."""
    scripted = [
        ("First I will add two and three with the tool.", "\n</think>\n\n" + call("add", a=2, b=3)),
        ("Now add the result to ten for the second part.", "\n</think>\n\n" + call("add", a=5, b=10)),
        ("The tool said fifteen, which answers the question.", "\n</think>\n\n15"),
    ]
    ids = [sampled_ids(r, rest) for r, rest in scripted]
    measured = {}
    for exact in (True, False):
        trace = tmp_path / f"exact-{exact}.jsonl"
        async with ScriptedModelServer([Turn(ids=i) for i in ids]) as server:
            async with SGLangClient(server.url, retry=NO_RETRY, keep_reasoning=True, exact_tokens=exact) as c:
                agent = Agent(c, [add], config=AgentConfig(check_language=False), trace_path=trace)
                result = await agent.run("What is 2 + 3 + 10?")
        assert result.status == "completed" and result.answer == "15"
        reqs = server.requests
        assert len(reqs) == 3
        # Turn 1 has no kept turn yet and goes as text; later turns go as ids only on the exact path.
        assert [r.input_ids is not None for r in reqs] == [False, exact, exact]
        measured[exact] = ([r.prompt_ids for r in reqs], [r.cached_tokens for r in reqs], trace, result)

    exact_prompts, exact_cached, trace, result = measured[True]
    text_prompts, text_cached, _, _ = measured[False]
    # Both paths said the same thing; only the ids of the kept turns differ.
    assert [TOK.decode(p) for p in exact_prompts] == [TOK.decode(p) for p in text_prompts]
    for k in range(1, 3):
        before = exact_prompts[k - 1] + ids[k - 1]  # the server's context after turn k-1
        assert exact_prompts[k][: len(before)] == before
        # New to the server: the template's markup and the observation, nothing it generated itself.
        new = len(exact_prompts[k]) - len(before)
        assert TOK.decode(exact_prompts[k][len(before) :]).startswith("<|im_end|>\n<|im_start|>user")
        assert len(exact_prompts[k]) - exact_cached[k] == new
        # The text path re-tokenizes the reasoning and loses the cache from its first merged token on.
        assert len(text_prompts[k]) - text_cached[k] > new + 20
    assert [m.token_ids for m in result.messages if m.role == "assistant"] == ids

    # The trace keeps the ids; a replay rebuilds the same messages and so the same id prompts.
    calls = [e for e in read_trace(trace) if isinstance(e, ModelCall)]
    assert [c.completion_ids for c in calls] == ids
    async with SGLangClient("http://127.0.0.1:9", retry=NO_RETRY, keep_reasoning=True) as offline:
        replay = ReplayModel.from_trace(trace, then=offline)
        agent = Agent(replay, [add], config=AgentConfig(check_language=False))
        events = [ev async for ev in agent.stream("What is 2 + 3 + 10?")]
        replayed = agent.result
        assert replayed is not None and replayed.answer == "15"
        assert not [e for e in events if isinstance(e, Warning_) and e.kind == "replay_divergence"]
        assert [m.model_dump() for m in replayed.messages] == [m.model_dump() for m in result.messages]
        history = replayed.messages
        assistant_at = [i for i, m in enumerate(history) if m.role == "assistant"]
        for k in range(1, 3):
            upto = history[: assistant_at[k]]
            assert offline.prompt_ids(upto, [add.spec]) == exact_prompts[k]


async def test_scripted_server_flush_cache_forgets_prefixes():
    async with ScriptedModelServer(["a b c"], when_exhausted="repeat") as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            await client.generate("the same prompt")
            again = await client.generate("the same prompt")
            assert again.usage.cached_tokens > 0
            response = await client._http.post("/flush_cache")
            assert response.status_code == 200
            flushed = await client.generate("the same prompt")
    assert flushed.usage.cached_tokens == 0


async def test_client_prompt_ids_only_with_kept_reasoning_and_prefix_joins_the_text():
    messages = conversation()
    async with (
        SGLangClient("http://127.0.0.1:9", keep_reasoning=True) as exact,
        SGLangClient("http://127.0.0.1:9", keep_reasoning=True, exact_tokens=False) as text,
        SGLangClient("http://127.0.0.1:9") as dropping,
    ):
        prefix = "Let me continue.\n</think>\n\n"
        ids = exact.prompt_ids(messages, [add.spec], prefix=prefix)
        assert ids is not None
        assert TOK.decode(ids) == exact.render_prompt(messages, [add.spec]) + prefix
        # The prefix is tokenized with the generation prompt before it, as the text path does.
        tail = TOK.encode("<|im_start|>assistant\n<think>\n" + prefix)
        assert ids[-len(tail) :] == tail
        assert text.prompt_ids(messages, [add.spec]) is None
        assert dropping.prompt_ids(messages, [add.spec]) is None
        assert exact.prompt_ids(messages[:2], [add.spec]) is None  # no kept turn: the prompt goes as text


async def test_random_token_turns_stream_as_the_ids_they_are():
    from qwq_agent.testing.random_turns import random_token_turns

    async with ScriptedModelServer(random_token_turns(50)) as server:
        async with SGLangClient(server.url, retry=NO_RETRY) as client:
            done = await client.generate("a prompt")
    assert len(done.output_ids) == 50
    # Random splits: the text re-tokenizes to other ids, and the kept ids are the generated ones.
    assert TOK.encode(done.text) != done.output_ids
    assert exact_output_ids(done.text, done.output_ids) == done.output_ids
