"""Pre- and postprocessing logic without a server: incremental detokenization, word lists, prompts.

The model files are loaded from model_repo/ by path, as Triton loads them. Tokenizers are trained
here on the bundled corpus (milliseconds): a byte-level BPE like Qwen's and a SentencePiece-style
BPE with byte fallback like Llama's, the two families whose streaming breaks in different ways.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from generator.resources import data_dir, model_repo_dir

REPO = model_repo_dir()
SAMPLES = [
    "Plain English, with spaces and punctuation.",
    "A café, a naïve façade and a crème roll.",
    "東京 and 京都 are two cities.",
    "Emoji: 😊 👍 ❤️ 🇯🇵 done.",
    "  two leading spaces,  and  double  spaces  ",
]


if str(REPO / "_shared") not in sys.path:
    sys.path.append(str(REPO / "_shared"))  # render copies model_common.py next to each model.py


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


detok = _load("tritongen_detok", REPO / "postprocessing" / "1" / "detok.py")


def _python_backend_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"


@pytest.fixture(scope="module")
def preprocessing():
    """The preprocessing model module (its Triton utils import is the real file from the wheel)."""
    sys.path.insert(0, str(_python_backend_dir()))
    try:
        return _load("tritongen_preprocessing", REPO / "preprocessing" / "1" / "model.py")
    finally:
        sys.path.remove(str(_python_backend_dir()))


@pytest.fixture(scope="module")
def engine_io():
    return _load("tritongen_trtllm_io", REPO / "tensorrt_llm_cpu" / "1" / "trtllm_io.py")


def _corpus() -> str:
    return (data_dir() / "corpus.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def byte_level():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_corpus()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


@pytest.fixture(scope="module")
def sentencepiece_like():
    """Metaspace BPE with byte fallback: '▁' marks spaces, unknown characters become <0xXX> bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator([_corpus()], trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                                             limit_alphabet=60))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):  # byte-fallback tokens belong to the model's vocabulary, not to the special tokens
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _decoder(tok):
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def _chunks(ids, rng, max_size):
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(1, max_size)
        out.append(ids[i:i + n])
        i += n
    return out


# ---------------------------------------------------------------- incremental detokenization


@pytest.mark.parametrize("family", ["byte_level", "sentencepiece_like"])
@pytest.mark.parametrize("text", SAMPLES)
def test_stream_joins_to_the_whole_text_and_never_splits_a_character(request, family, text):
    tok = request.getfixturevalue(family)
    decode = _decoder(tok)
    ids = tok.encode(text, add_special_tokens=False)
    whole = decode(ids)
    pieces = detok.detokenize_stream(decode, [[i] for i in ids])
    assert "".join(pieces) == whole
    assert not any(detok.REPLACEMENT in p for p in pieces)  # valid text: no broken character in any piece
    rng = random.Random(text)
    for _ in range(20):  # engines may also send several tokens per response
        assert "".join(detok.detokenize_stream(decode, _chunks(ids, rng, 4))) == whole


def test_the_cases_are_real_token_by_token_decoding_breaks_them(byte_level, sentencepiece_like):
    """Guard against a vacuous suite: the naive per-chunk decode (upstream's) fails on these samples."""
    for tok in (byte_level, sentencepiece_like):
        decode = _decoder(tok)
        broken = [t for t in SAMPLES if "".join(decode([i]) for i in tok.encode(t, add_special_tokens=False)) != decode(tok.encode(t, add_special_tokens=False))]
        assert len(broken) >= 2
    spaced = sentencepiece_like.encode("a café, a crème", add_special_tokens=False)
    assert " " not in "".join(_decoder(sentencepiece_like)([i]) for i in spaced)  # spaces lost when alone


def test_incomplete_character_is_held_back_until_complete(byte_level):
    decode = _decoder(byte_level)
    d = detok.IncrementalDetokenizer(decode)
    emoji = byte_level.encode("😊", add_special_tokens=False)
    assert len(emoji) > 1, "the emoji must span tokens for this test to mean anything"
    assert d.push(byte_level.encode("Hi ", add_special_tokens=False)) == "Hi "
    assert d.push(emoji[:1]) == "" and d.holding
    assert d.push(emoji[1:]) == "😊" and not d.holding


def test_finish_releases_a_truncated_character_as_the_whole_decode_shows_it(byte_level):
    decode = _decoder(byte_level)
    ids = byte_level.encode("ok 東", add_special_tokens=False)[:-1]  # cut inside the last character
    d = detok.IncrementalDetokenizer(decode)
    pieces = [d.push([i]) for i in ids] + [d.finish()]
    assert "".join(pieces) == decode(ids) and decode(ids).endswith(detok.REPLACEMENT)


def test_special_tokens_are_skipped(byte_level):
    decode = _decoder(byte_level)
    special = byte_level.convert_tokens_to_ids("<|im_start|>")
    ids = byte_level.encode("one two", add_special_tokens=False) + [special] + byte_level.encode(" three", add_special_tokens=False)
    pieces = detok.detokenize_stream(decode, [[i] for i in ids])
    assert "".join(pieces) == "one two three"


def test_byte_level_streams_match_even_for_invalid_byte_sequences(byte_level):
    """Random ids (what a random-weight model emits) include lone continuation bytes: still equal."""
    decode = _decoder(byte_level)
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(len(byte_level)) for _ in range(rng.randint(1, 30))]
        assert "".join(detok.detokenize_stream(decode, _chunks(ids, rng, 3))) == decode(ids)


def test_stream_table_bounds_and_expires_streams():
    now = [0.0]
    table = detok.StreamTable(lambda: detok.IncrementalDetokenizer(lambda ids: ""), max_streams=2, idle_s=10,
                              clock=lambda: now[0])
    a = table.get("a")
    assert table.get("a") is a
    table.get("b")
    table.get("c")  # over the bound: the least recently used ("a") goes
    assert len(table) == 2 and table.pop("a") is None
    now[0] = 11.0
    fresh = table.get("b")  # idle past the limit: a new stream
    assert len(table) == 1 and table.pop("b") is fresh


# ---------------------------------------------------------------- preprocessing


def test_word_lists_use_the_offsets_layout_the_engine_reads(preprocessing, engine_io, byte_level):
    encode = lambda w: byte_level.encode(w, add_special_tokens=False)  # noqa: E731
    words = [[b" the", "café".encode(), b""], [b"\xe6\x9d\xb1\xe4\xba\xac"]]
    out = preprocessing.word_lists_to_ids(encode, words, 2)
    assert out.dtype == np.int32 and out.shape[:2] == (2, 2)
    first = [encode(" the"), encode("café")]
    assert out[0, 1, :2].tolist() == [len(first[0]), len(first[0]) + len(first[1])]  # cumulative end offsets
    assert (out[0, 1, 2:] == -1).all()
    for row, expected in zip(out, [first, [encode("東京")]]):
        assert engine_io.word_list(row) == expected  # what the CPU engine (and TensorRT-LLM) reads back
    empty = preprocessing.word_lists_to_ids(encode, None, 3)
    assert empty.shape == (3, 2, 0)
    assert engine_io.word_list(preprocessing.word_lists_to_ids(encode, [[b""]], 1)[0]) == []


def test_chat_template_wraps_each_prompt_in_one_batch(preprocessing, byte_level):
    model = preprocessing.TritonPythonModel()
    model.tokenizer, model.add_special_tokens = byte_level, True
    ids = model._encode_prompts(["hello there", "東京"], chat=True)
    assert ids[0] == byte_level.apply_chat_template([{"role": "user", "content": "hello there"}],
                                                    add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
    assert byte_level.decode(ids[1]).startswith("<|im_start|>user\n東京<|im_end|>")
    assert model._encode_prompts(["hello there"], chat=False)[0] == byte_level.encode("hello there")


def test_prompt_bytes_must_be_utf8(preprocessing):
    assert preprocessing._texts(np.array([["café".encode()]], dtype=object), "text_input") == ["café"]
    with pytest.raises(preprocessing.RequestError, match="text_input is not valid UTF-8"):
        preprocessing._texts(np.array([[b"\xff\xfe"]], dtype=object), "text_input")


# ---------------------------------------------------------------- postprocessing


class _Tensor:
    def __init__(self, name, value):
        self._name, self._value = name, np.asarray(value)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._value


class _Request:
    """What postprocessing reads of a Triton request: its inputs by name and the client's request id."""

    def __init__(self, request_id, **inputs):
        self._id, self._inputs = request_id, [_Tensor(k, v) for k, v in inputs.items()]

    def request_id(self):
        return self._id

    def inputs(self):
        return self._inputs


@pytest.fixture(scope="module")
def postprocessing(byte_level):
    sys.path.insert(0, str(_python_backend_dir()))
    try:
        module = _load("tritongen_postprocessing", REPO / "postprocessing" / "1" / "model.py")
    finally:
        sys.path.remove(str(_python_backend_dir()))
    model = module.TritonPythonModel()
    model.tokenizer, model.skip_special_tokens, model.vocab_size = byte_level, True, len(byte_level)
    model.max_shape = (None, None)  # as a repository rendered before max_beam_width/max_seq_len were passed
    model.streams = detok.StreamTable(lambda: detok.IncrementalDetokenizer(model._decode))
    return module, model


def _chunk(ids, **identity):
    return {"TOKENS_BATCH": np.array([[ids]], np.int32), "SEQUENCE_LENGTH": np.array([[len(ids)]], np.int32),
            **identity}


def test_streams_with_the_same_client_id_keep_their_own_state(postprocessing, byte_level):
    """Finding 2: the detokenizer state was keyed by the client's request id, so two clients sending the same
    id shared held bytes. Now the key is server-made: the engine's arrival time (ensemble) or the BLS's id."""
    _, model = postprocessing
    texts = {"a": "Emoji: 😊 done", "b": "東京 and 京都"}
    ids = {k: byte_level.encode(t, add_special_tokens=False) for k, t in texts.items()}
    for identity in ({"a": {"ARRIVAL_TIME_NS": [[11]]}, "b": {"ARRIVAL_TIME_NS": [[12]]}},
                     {"a": {"STREAM_ID": [[b"bls-1"]]}, "b": {"STREAM_ID": [[b"bls-2"]]}}):
        pieces = {"a": [], "b": []}
        for i in range(max(len(v) for v in ids.values())):  # interleaved, one token at a time
            for key in ("a", "b"):
                if i < len(ids[key]):
                    pieces[key] += model._texts(_Request("same-id", **_chunk(ids[key][i:i + 1], **identity[key])))
        for key in ("a", "b"):
            pieces[key] += model._texts(_Request("same-id", **_chunk([], **identity[key])))  # the final flush
            assert "".join(pieces[key]) == texts[key]
        assert len(model.streams) == 0


def test_one_request_cannot_push_other_streams_out_of_the_table(postprocessing, byte_level, monkeypatch):
    """Review 8: the table of streams is bounded, and one request with more beams than it holds, under its own
    STREAM_ID, pushed every other stream out: a stream holding half a character lost it ('😊' became U+FFFD
    through the real server). Such a request is decoded chunk by chunk and keeps no state."""
    module, model = postprocessing
    monkeypatch.setattr(model, "streams", detok.StreamTable(lambda: detok.IncrementalDetokenizer(model._decode),
                                                            max_streams=4 * module.MAX_STREAMS_PER_REQUEST))
    text = "Emoji: 😊 done"
    ids = byte_level.encode(text, add_special_tokens=False)
    split = next(k for k in range(1, len(ids)) if byte_level.decode(ids[:k]).endswith("\ufffd"))
    victim = {"STREAM_ID": [[b"bls-victim"]]}
    pieces = model._texts(_Request("", **_chunk(ids[:split], **victim)))
    beams = 4 * module.MAX_STREAMS_PER_REQUEST + 1
    flood = model._texts(_Request("", TOKENS_BATCH=np.array([[ids[:1]] * beams], np.int32),
                                  SEQUENCE_LENGTH=np.array([[1] * beams], np.int32), STREAM_ID=[[b"bls-other"]]))
    assert flood == [byte_level.decode(ids[:1])] * beams  # still answered, chunk by chunk
    pieces += model._texts(_Request("", **_chunk(ids[split:], **victim)))
    pieces += model._texts(_Request("", **_chunk([], **victim)))
    assert "".join(pieces) == text and len(model.streams) == 0


def test_a_request_larger_than_any_engine_response_is_refused(postprocessing, monkeypatch):
    """Review 8: 200,000 beams of one token (0.8 MB) straight to postprocessing held every other stream's text
    for 1.2 s. More beams than max_beam_width or tokens than max_seq_len: a 400."""
    module, model = postprocessing
    monkeypatch.setattr(model, "max_shape", (2, 16))
    for shape, what in (((1, 3, 1), "3 beams"), ((1, 1, 17), "17 tokens"), ((1, 17), "17 tokens")):
        lengths = np.ones(shape[:2] if len(shape) == 3 else (1, 1), np.int32)
        with pytest.raises(module.RequestError, match=f"holds {what}, more than an engine response"):
            model._texts(_Request("", TOKENS_BATCH=np.full(shape, 5, np.int32), SEQUENCE_LENGTH=lengths))
    largest = _Request("", TOKENS_BATCH=np.full((1, 2, 16), 5, np.int32), SEQUENCE_LENGTH=np.full((1, 2), 16, np.int32))
    assert len(model._texts(largest)) == 2


def test_postprocessing_refuses_what_no_engine_sends(postprocessing):
    module, model = postprocessing
    with pytest.raises(module.RequestError, match="outside"):
        model._texts(_Request("", **_chunk([5, 10**6])))
    with pytest.raises(module.RequestError, match="SEQUENCE_LENGTH"):
        model._texts(_Request("", TOKENS_BATCH=np.array([[[5, 6]]], np.int32), SEQUENCE_LENGTH=np.array([[9]], np.int32)))
    # no server-made identity (an engine that does not stamp arrival times): each chunk alone, no state kept
    assert model._texts(_Request("x", **_chunk([5], ARRIVAL_TIME_NS=[[0]]))) and len(model.streams) == 0


def _tokenizer_folder(src: Path, out: Path, tokenizer_class: str, model_type: str) -> Path:
    """``src``'s tokenizer, declaring ``tokenizer_class`` for a model of ``model_type``."""
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((src / name).read_bytes())
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))
    (out / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": 8}))
    return out


@pytest.mark.parametrize("tokenizer_class", ["PreTrainedTokenizerFast", "TokenizersBackend"])
@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_a_declared_fast_tokenizer_loads_as_autotokenizer_loads_it(tokenizer_weights_dir, tmp_path, tokenizer_class,
                                                                   model_type):
    """The models load such a folder without AutoTokenizer (and torch): the same class, ids and text."""
    import model_common
    from transformers import AutoTokenizer

    folder = str(_tokenizer_folder(tokenizer_weights_dir, tmp_path / "tok", tokenizer_class, model_type))
    assert model_type in model_common.FAST_MODEL_TYPES and model_common._declared_fast(folder)
    ours, auto = model_common.load_tokenizer(folder), AutoTokenizer.from_pretrained(folder, use_fast=True)
    assert type(ours) is type(auto)
    text = "hello the triton model <eos> unknown world"
    assert ours(text).input_ids == auto(text).input_ids and ours.all_special_ids == auto.all_special_ids
    for skip in (True, False):
        assert ours.decode(auto(text).input_ids, skip_special_tokens=skip) == auto.decode(
            auto(text).input_ids, skip_special_tokens=skip)


def test_other_tokenizers_are_left_to_autotokenizer(tokenizer_weights_dir, tmp_path):
    """Another class, a model type whose hub class AutoTokenizer overrides (qwen2), remote code, or a Hub id."""
    import model_common

    assert not model_common._declared_fast(str(_tokenizer_folder(tokenizer_weights_dir, tmp_path / "a",
                                                                 "Qwen2Tokenizer", "qwen3")))
    assert not model_common._declared_fast(str(_tokenizer_folder(tokenizer_weights_dir, tmp_path / "b",
                                                                 "PreTrainedTokenizerFast", "qwen2")))
    remote = _tokenizer_folder(tokenizer_weights_dir, tmp_path / "c", "PreTrainedTokenizerFast", "qwen3")
    config = json.loads((remote / "tokenizer_config.json").read_text())
    (remote / "tokenizer_config.json").write_text(json.dumps({**config, "auto_map": {"AutoTokenizer": ["x.Tok", None]}}))
    assert not model_common._declared_fast(str(remote))
    assert not model_common._declared_fast("Qwen/Qwen3-8B")
