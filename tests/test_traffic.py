"""Workloads of the load generator, with the served model's real tokenizer: trace replay (Mooncake rows whose
shared hash ids become shared prompt tokens, plain rows, the schedule), shared-prefix and multi-turn synthesis."""

from __future__ import annotations

import json
import os
import sys

import pytest

from generator.resources import loadtest_dir
from generator.spec import load_spec
from helpers import request_record

sys.path.insert(0, str(loadtest_dir()))
import prompts as lt_prompts  # noqa: E402
import traces  # noqa: E402
from prompts import Prompt, follow_up, load_tokenizer, synthesize  # noqa: E402
from traces import read_trace  # noqa: E402

TRACES = loadtest_dir() / "traces"
BLOCK = 16


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_mooncake_rows_share_prefix_tokens_exactly_where_they_share_hash_ids(tokenizer):
    path = TRACES / "mooncake-small.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    prompts, offsets = read_trace(path, tokenizer, seed=0, block_tokens=BLOCK, time_scale=0.5, output_mean=8)
    ids = [_ids(tokenizer, p.text) for p in prompts]
    assert [len(i) for i in ids] == [r["input_length"] for r in rows] == [p.input_tokens for p in prompts]
    assert [p.max_tokens for p in prompts] == [r["output_length"] for r in rows]
    assert offsets == [round((r["timestamp"] - rows[0]["timestamp"]) * 0.5e6) for r in rows]
    pairs = shared = 0
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            ha, hb = rows[a]["hash_ids"], rows[b]["hash_ids"]
            common = next((k for k, (x, y) in enumerate(zip(ha, hb)) if x != y), min(len(ha), len(hb)))
            # whole blocks both requests hold: the same tokens; the first differing block: other tokens
            full = min(common, len(ids[a]) // BLOCK, len(ids[b]) // BLOCK)
            assert ids[a][:full * BLOCK] == ids[b][:full * BLOCK]
            if common < min(len(ha), len(hb)) and (common + 1) * BLOCK <= min(len(ids[a]), len(ids[b])):
                assert ids[a][common * BLOCK:(common + 1) * BLOCK] != ids[b][common * BLOCK:(common + 1) * BLOCK]
            pairs += 1
            shared += full > 0
    assert shared > pairs // 10  # the trace really has shared prefixes to test


def test_plain_trace_rows_keep_prompts_messages_and_max_tokens(tokenizer):
    path = TRACES / "plain-small.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    prompts, offsets = read_trace(path, tokenizer, seed=0, block_tokens=BLOCK, time_scale=1.0, output_mean=99)
    assert [p.max_tokens for p in prompts] == [r["max_tokens"] for r in rows]
    for p, r in zip(prompts, rows):
        if "messages" in r:
            assert list(p.messages) == r["messages"] and r["messages"][-1]["content"] in p.text
        else:
            assert p.text == r["prompt"] and p.messages is None
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_a_bad_trace_row_names_its_line(tokenizer, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "prompt": "hi"}\n{"prompt": "no time"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: .*timestamp"):
        read_trace(path, tokenizer, seed=0, block_tokens=BLOCK, time_scale=1.0, output_mean=8)


@pytest.mark.parametrize("rows, line", [
    ('{"timestamp": 0, "prompt": "hi"}\n{"timestamp": NaN, "prompt": "hi"}\n', 2),
    ('{"timestamp": 0, "input_length": %d, "hash_ids": [1]}\n' % (traces.MAX_ROW_TOKENS + 1), 1),
    ('{"timestamp": 0, "input_length": 1e300}\n', 1),
    ('{"timestamp": 0, "prompt": "hi"}\n{"timestamp": 1, "prompt": "%s"}\n'
     % (" a" * (lt_prompts.MAX_ROW_CHARS // 2 + 1)), 2),
    ('{"timestamp": 0, "messages": ["not an object"]}\n', 1),
    ('{"timestamp": 0, "prompt": "hi"}\n{"timestamp": 1, "prompt": "half a pair \\ud800"}\n', 2),
    ('{"timestamp": 0, "input_length": 5, "output_length": "many"}\n', 1),
    ('{"timestamp": 0, "prompt": "hi", "max_tokens": -5}\n', 1),
    ('{"timestamp": 0, "input_length": 5, "hash_ids": %s}\n' % ("[" * 100_000 + "]" * 100_000), 1),
    ('{"timestamp": -1e308, "prompt": "a"}\n{"timestamp": 1e308, "prompt": "b"}\n', 1),
    ('{"timestamp": 1%s, "prompt": "a"}\n' % ("0" * 400), 1),  # review16: 401-digit integers, an OverflowError
    ('{"timestamp": 0, "input_length": 1%s}\n' % ("0" * 400), 1),  # naming no row where a float was made of them
    ('{"timestamp": 0, "prompt": "hi"}\n{"timestamp": 1, "prompt": "a", "output_length": 1%s}\n' % ("0" * 400), 2),
], ids=["nan-timestamp", "longer-than-any-model-takes", "not-whole", "prompt-text-too-long", "messages-not-objects",
        "prompt-not-unicode", "output-length-not-a-count", "negative-max-tokens", "nested-too-deep", "endless-span",
        "huge-integer-timestamp", "huge-integer-input-length", "huge-integer-output-length"])
def test_a_trace_row_a_replay_cannot_send_is_refused_before_any_prompt_is_built(tokenizer, tmp_path, rows, line):
    """A 70-byte row asking for 2M prompt tokens cost each Locust process 1.4 GB and 10 s before any request (a
    9.6M-character prompt: 1.5 GB, 9 s)."""
    path = tmp_path / "t.jsonl"
    path.write_text(rows)
    with pytest.raises(ValueError, match=rf"t.jsonl:{line}: "):
        read_trace(path, tokenizer, seed=0, block_tokens=BLOCK, time_scale=1.0, output_mean=8)


def test_a_trace_is_read_bounded_a_line_and_a_total_at_a_time(tokenizer, tmp_path, monkeypatch):
    """A sparse trace without newlines (no disk used) is refused after one bounded line; rows that together ask for
    more prompt tokens than the Locust process holds are refused at the row that crosses the bound."""
    import tracemalloc

    sparse = tmp_path / "sparse.jsonl"
    sparse.write_text('{"timestamp": 0, "prompt": "hi"}\n')
    os.truncate(sparse, 4 * lt_prompts.MAX_LINE_CHARS)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"sparse.jsonl:2: longer than"):
            read_trace(sparse, tokenizer, seed=0, block_tokens=BLOCK, time_scale=1.0, output_mean=8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * lt_prompts.MAX_LINE_CHARS * 4  # one line (UCS-4 at worst) and a copy, not the file
    monkeypatch.setattr(traces, "MAX_TRACE_TOKENS", 100)
    many = tmp_path / "many.jsonl"
    many.write_text("".join('{"timestamp": %d, "input_length": 40}\n' % t for t in range(5)))
    with pytest.raises(ValueError, match=r"many.jsonl:3: the rows up to here ask for more than 100"):
        read_trace(many, tokenizer, seed=0, block_tokens=BLOCK, time_scale=1.0, output_mean=8)


def test_shared_prefix_groups_share_exact_tokens(tokenizer):
    prompts = synthesize(tokenizer, count=6, seed=3, input_mean=8, input_stddev=0, output_mean=4, output_stddev=0,
                         shared_prefix_tokens=24, prefix_groups=2)
    ids = [_ids(tokenizer, p.text) for p in prompts]
    assert all(len(i) == 32 for i in ids)
    assert ids[0][:24] == ids[2][:24] == ids[4][:24] and ids[1][:24] == ids[3][:24]
    assert ids[0][:24] != ids[1][:24] and ids[0][24:] != ids[2][24:]
    plain = synthesize(tokenizer, count=6, seed=3, input_mean=8, input_stddev=0, output_mean=4, output_stddev=0)
    assert [p.text for p in plain] == [p.text[len(p.text) - len(q.text):] for p, q in zip(prompts, plain)]


def test_each_turn_resends_the_conversation_so_far(tokenizer):
    first = synthesize(tokenizer, count=1, seed=0, input_mean=8, input_stddev=0, output_mean=4, output_stddev=0,
                       turns=3)[0]
    assert len(first.turns) == 2
    second = follow_up(first, " answer one", first.turns[0], 7, tokenizer)
    third = follow_up(second, " answer two", first.turns[1], 8, tokenizer)
    assert [m["role"] for m in third.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in third.messages] == [first.text, " answer one", first.turns[0], " answer two",
                                                     first.turns[1]]
    assert third.text.startswith(second.text) and second.text.startswith(first.text)
    assert third.input_tokens == len(_ids(tokenizer, third.text)) and isinstance(third, Prompt)


def test_trace_and_request_rate_are_one_or_the_other():
    from generator.errors import SpecError

    with pytest.raises(SpecError, match="loadtest.trace sets the schedule"):
        load_spec(None, ["loadtest.trace=t.jsonl", "loadtest.request_rate=2"])
    with pytest.raises(SpecError, match="openai_body applies"):
        load_spec(None, ['loadtest.openai_body={"a": 1}'])


def test_prefix_reuse_reads_the_servers_figures():
    """TensorRT-LLM leaves reused=0 out of the record (only the block total is there); OpenAI sends cached_tokens."""
    from generator.measure.statistics import summarize

    def record(i: int, server: dict, ttft_ms: int) -> dict:
        return request_record([" a", " b"], first=ttft_ms, gap=5, server=server, id=f"p0-{i}", prompt=i,
                              input_tokens=8)

    blocks = summarize([record(0, {"kv_cache_alloc_total_blocks": 4}, 50),
                        record(1, {"kv_cache_alloc_total_blocks": 4, "kv_cache_reused_blocks": 3}, 20)]).prefix_reuse
    assert (blocks.unit, blocks.hit_share, blocks.hit_requests, blocks.ttft_hit.p50, blocks.ttft_miss.p50) == \
        ("blocks", 3 / 8, 1, 20.0, 50.0)
    tokens = summarize([record(0, {"num_input_tokens": 10, "num_cached_tokens": 5}, 30)]).prefix_reuse
    assert (tokens.unit, tokens.hit_share) == ("tokens", 0.5)
    assert summarize([record(0, {"num_input_tokens": 10}, 30)]).prefix_reuse is None
    # review28: a records file's totals of 5 and -5 summed to 0, a ZeroDivisionError; a total that is no count is left out
    odd = summarize([record(0, {"num_input_tokens": 5, "num_cached_tokens": 1}, 30),
                     record(1, {"num_input_tokens": -5, "num_cached_tokens": 1}, 30)]).prefix_reuse
    assert (odd.requests, odd.hit_share) == (1, 0.2)
