"""Smoke test of a running Triton server: the checks a user runs before trusting a repository.

Every check talks to the server through the clients production uses (generator/serve/client.py): HTTP
``generate`` / ``generate_stream`` (server-sent events), HTTP ``infer`` and gRPC decoupled streaming.
A failed check never stops the run; the report lists every check with its detail.

The same checks run against both kinds of repository, in the request dialect the served model speaks
(client.ENSEMBLE or client.LLMAPI); the LLM-API model's own checks (finish and stop reasons, perf
metrics, cancellation by the ``stop`` input) are in smoke_llmapi.py; smoke_run.py picks which run.

Streaming checks send a unique request id per request: the postprocessing model uses it to
detokenize a stream incrementally (see model_repo/postprocessing/1/model.py), which is what
makes the joined stream equal the non-streamed text.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from generator.engine.facts import read_engine_if_built, runtime_limits
from generator.errors import TritongenError
from generator.serve.client import (
    ENSEMBLE, REPLACEMENT, UNREADABLE, Dialect, ServerRequestError, StreamResult, dialect_for_inputs,
    endpoint_url, exchange, generate, generate_stream, get_json, grpc_stream, http_infer, is_ready, joined_text,
    post_json, text_inputs,
)

DEFAULT_PROMPT = "Tea travelled a long way before it reached the small café on the corner."

MAX_TESTED_INPUT_LEN = 1 << 20
"""The largest max_input_len the over-length check sends a prompt past (6 MB of text): the limit is the server's
word, and a server naming 200,000,000 made smoke build a 1.2 GB prompt (3.6 GB of memory)."""

_TRITON_TO_METADATA = {"TYPE_STRING": "BYTES"}


# ---------------------------------------------------------------- pure deciders


def compare_metadata(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Differences between a model's metadata and its config (inputs, outputs, platform)."""
    problems = []
    batch = [-1] if config.get("max_batch_size", 0) > 0 else []
    platform = config.get("platform") or config.get("backend")
    if metadata.get("platform") != platform:
        problems.append(f"platform {metadata.get('platform')!r} vs config {platform!r}")
    for kind, key in (("inputs", "input"), ("outputs", "output")):
        expected = {
            t["name"]: (_TRITON_TO_METADATA.get(t["data_type"], t["data_type"].removeprefix("TYPE_")),
                        batch + [int(d) for d in t.get("dims", [])])
            for t in config.get(key, [])
        }
        actual = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata.get(kind, [])}
        for name in sorted(set(expected) | set(actual)):
            if name not in actual:
                problems.append(f"{kind[:-1]} {name} in config but not in metadata")
            elif name not in expected:
                problems.append(f"{kind[:-1]} {name} in metadata but not in config")
            elif actual[name] != expected[name]:
                problems.append(f"{kind[:-1]} {name}: metadata {actual[name]} vs config {expected[name]}")
    return problems


def same_text(streamed: str, whole: str) -> tuple[bool, str]:
    """Streamed text equals the whole text; a stream may hold back a final incomplete character
    when the engine ends it without an empty final response, which shows as missing U+FFFD."""
    if streamed == whole:
        return True, "equal"
    if whole.endswith(REPLACEMENT) and streamed == whole.rstrip(REPLACEMENT):
        return True, "equal except a trailing incomplete character held back"
    at = next((i for i, (a, b) in enumerate(zip(streamed, whole)) if a != b), min(len(streamed), len(whole)))
    return False, f"differ at char {at}: streamed {streamed[at:at + 20]!r} vs {whole[at:at + 20]!r}"


_DEAD_STUB = re.compile(r"Stub process '(.+?)_\d+_\d+' is not healthy")


def down_models(details: Sequence[str]) -> list[str]:
    """Models whose Python backend stub died, from what the checks got back: Triton 2.51 answers their
    requests with "Stub process 'MODEL_GROUP_INDEX' is not healthy" while still reporting them ready."""
    return sorted({m.group(1) for d in details for m in _DEAD_STUB.finditer(d)})


def stop_word_candidates(pieces: Sequence[str], limit: int = 3) -> list[tuple[str, str, str]]:
    """(word, text through the word, text before it) for streamed pieces that can serve as a stop
    word: printable, not seen earlier in the stream, not the first piece."""
    out = []
    for i in range(1, len(pieces)):
        word = pieces[i]
        before = "".join(pieces[:i])
        if not word.strip() or REPLACEMENT in word or not word.isprintable() or word in before:
            continue
        out.append((word, before + word, before))
        if len(out) == limit:
            break
    return out


# ---------------------------------------------------------------- the report


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class SmokeReport:
    http_url: str
    grpc_url: str
    model: str
    dialect: str = ENSEMBLE.name
    checks: list[Check] = field(default_factory=list)
    down_models: list[str] = field(default_factory=list)
    """Models whose Python stub died (their requests came back "not healthy")."""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        return {"http_url": self.http_url, "grpc_url": self.grpc_url, "model": self.model, "dialect": self.dialect,
                "ok": self.ok, "down_models": self.down_models, "checks": [c.__dict__ for c in self.checks]}


class CheckFailed(Exception):
    pass


def _expect(condition: bool, detail: str) -> None:
    if not condition:
        raise CheckFailed(detail)


def _short(text: str, n: int = 48) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


class Smoke:
    """The checks, in order; later checks reuse the reference answer of the first generate."""

    dialect: Dialect = ENSEMBLE

    def __init__(self, http_url, grpc_url, model, bls_model, prompt, max_tokens, max_input_len, timeout_s, progress,
                 admin_key=None):
        self.http, self.grpc, self.model, self.bls = http_url, grpc_url, model, bls_model
        self.admin_headers = admin_headers(admin_key)
        self.prompt, self.max_tokens, self.max_input_len = prompt, max_tokens, max_input_len
        self.timeout = timeout_s
        self.progress = progress
        self.report = SmokeReport(http_url, grpc_url, model, self.dialect.name)
        self.reference: Optional[str] = None
        self.stream: Optional[StreamResult] = None
        self.models: list[str] = []
        self.stop_word: Optional[str] = None
        self.configs: dict[str, dict] = {}

    def check(self, name: str, fn: Callable[[], str]) -> None:
        if self.progress:
            self.progress(name)
        started = time.monotonic()
        try:
            ok, detail = True, fn()
        except CheckFailed as exc:
            ok, detail = False, str(exc)
        except ServerRequestError as exc:
            ok, detail = False, f"server error: {exc}"
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed check, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.report.checks.append(Check(name, ok, detail, time.monotonic() - started))

    # -------------------------------------------------------------- helpers

    def body(self, max_tokens: Optional[int] = None, *, stop_words: Sequence[str] = (), **extra) -> dict:
        """A generate request body in the model's dialect (greedy, so answers can be compared)."""
        d = self.dialect
        body = {"text_input": self.prompt, d.max_tokens: self.max_tokens if max_tokens is None else max_tokens,
                **d.greedy}
        if stop_words:
            body[d.stop] = list(stop_words)
        body.update(extra)
        return body

    def tensors(self, prompt: str | bytes, max_tokens: int, *, stream: Optional[bool] = None,
                stop_words: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The same request as tensors (gRPC and HTTP infer)."""
        return text_inputs(prompt, max_tokens, stream=stream, stop_words=stop_words)

    def text(self, model: Optional[str] = None, **body) -> str:
        return generate(self.http, model or self.model, self.body(**body), self.timeout)["text_output"]

    def need_reference(self) -> str:
        _expect(self.reference is not None, "skipped: the non-streaming generate check failed")
        return self.reference

    def expect_error(self, send: Callable[[], Any], *words: str) -> str:
        """The request must fail with a message naming one of ``words``; the server must stay ready."""
        try:
            answer = send()
        except ServerRequestError as exc:
            message = str(exc)
        else:
            if isinstance(answer, StreamResult) and answer.error:
                message = answer.error
            else:
                raise CheckFailed(f"no error; the server answered {str(answer)[:80]!r}")
        _expect(any(w.lower() in message.lower() for w in words),
                f"error does not say what is wrong (expected one of {words}): {message[:160]}")
        _expect(self.ready(), "server not ready after the bad request")
        return message[:140]

    def ready(self) -> bool:
        return is_ready(self.http)

    @property
    def streams(self) -> bool:
        """Token streaming needs a decoupled model (serving.decoupled); otherwise one response comes."""
        return self.decoupled(self.model)

    def stream_text(self, model: str, max_tokens: int, **kw) -> StreamResult:
        return grpc_stream(self.grpc, model, self.tensors(self.prompt, max_tokens, stream=self.streams, **kw),
                           timeout=self.timeout, cumulative=self.dialect.cumulative)

    # -------------------------------------------------------------- checks

    def live(self) -> str:
        for path in ("/v2/health/live", "/v2/health/ready"):
            with exchange("GET", endpoint_url(self.http, path), timeout=10) as (status, _):  # the status alone
                _expect(status == 200, f"GET {path}: HTTP {status}")
        return f"tritonserver {get_json(self.http, '/v2').get('version', '?')}"

    def models_ready(self) -> str:
        index = post_json(self.http, "/v2/repository/index", {}, self.timeout, headers=self.admin_headers)
        bad = [f"{m['name']}: {m.get('state')} {m.get('reason', '')}".strip() for m in index if m.get("state") != "READY"]
        self.models = sorted(m["name"] for m in index if m.get("state") == "READY")
        _expect(not bad, "; ".join(bad))
        _expect(self.model in self.models, f"model {self.model!r} is not in the repository ({', '.join(self.models)})")
        return ", ".join(self.models)

    def metadata(self) -> str:
        _expect(bool(self.models), "skipped: no ready models")
        problems = []
        for name in self.models:
            config = get_json(self.http, f"/v2/models/{name}/config")
            self.configs[name] = config
            problems += [f"{name}: {p}" for p in compare_metadata(get_json(self.http, f"/v2/models/{name}"), config)]
        _expect(not problems, "; ".join(problems[:5]))
        return f"{len(self.models)} models: inputs, outputs and platform match"

    def decoupled(self, name: str) -> bool:
        config = self.configs.get(name) or get_json(self.http, f"/v2/models/{name}/config")
        return bool(config.get("model_transaction_policy", {}).get("decoupled", False))

    def first_generate(self) -> str:
        self.reference = self.text()
        _expect(self.reference.strip() != "", "empty text_output")
        return _short(self.reference)

    def infer(self) -> str:
        reference = self.need_reference()
        tensors = self.tensors(self.prompt, self.max_tokens)
        if not self.decoupled(self.model):
            result = http_infer(self.http, self.model, tensors, self.timeout)
            text = result.as_numpy("text_output").reshape(-1)[0].decode("utf-8")
            _expect(text == reference, f"infer {_short(text)} differs from generate {_short(reference)}")
            return "text equals generate"
        try:
            http_infer(self.http, self.model, tensors, self.timeout)
        except ServerRequestError as exc:
            _expect("decoupled" in str(exc), f"unexpected error: {exc}")
            return "refused, as Triton does for decoupled models (stream over gRPC instead)"
        raise CheckFailed("plain infer on a decoupled model was accepted")

    def infer_tokenizer_round_trip(self) -> str:
        """preprocessing and postprocessing are plain (not decoupled) models: infer works on them."""
        ids = http_infer(self.http, "preprocessing", {
            "QUERY": np.array([[self.prompt.encode("utf-8")]], dtype=np.object_),
            "REQUEST_OUTPUT_LEN": np.array([[self.max_tokens]], dtype=np.int32)}, self.timeout).as_numpy("INPUT_ID")
        text = http_infer(self.http, "postprocessing", {
            "TOKENS_BATCH": ids.reshape(1, 1, -1).astype(np.int32),
            "SEQUENCE_LENGTH": np.array([[ids.shape[1]]], dtype=np.int32)}, self.timeout).as_numpy("OUTPUT")
        text = text.reshape(-1)[0].decode("utf-8")
        _expect(self.prompt in text, f"ids of the prompt decode to {_short(text)}")
        return f"{ids.shape[1]} prompt tokens decode back to the prompt"

    def grpc_streaming(self) -> str:
        reference = self.need_reference()
        self.stream = self.stream_text(self.model, self.max_tokens)
        _expect(self.stream.error is None, f"stream error: {self.stream.error}")
        _expect(self.stream.text.strip() != "", "stream carried no text")
        ok, how = same_text(self.stream.text, reference)
        _expect(ok, how)
        kind = "responses" if self.streams else "response (model not decoupled: no token streaming)"
        return f"{len(self.stream.pieces)} {kind}; joined text {how} to generate"

    def sse_streaming(self) -> str:
        reference = self.need_reference()
        events = generate_stream(self.http, self.model,
                                 self.body(**{self.dialect.stream: self.streams, "id": uuid.uuid4().hex}), self.timeout)
        text = joined_text([e.get("text_output", "") for e in events], self.dialect.cumulative)
        ok, how = same_text(text, reference)
        _expect(ok, how)
        return f"{len(events)} events; joined text {how} to generate"

    def deterministic(self) -> str:
        reference = self.need_reference()
        again = self.text()
        _expect(again == reference, f"second answer {_short(again)} differs from {_short(reference)}")
        return "same prompt, same answer"

    def max_tokens_honoured(self) -> str:
        reference = self.need_reference()
        half = max(1, self.max_tokens // 2)
        short = self.text(max_tokens=half)
        _expect(reference.startswith(short.rstrip(REPLACEMENT)),
                f"max_tokens={half} gave {_short(short)}, not a prefix of the max_tokens={self.max_tokens} answer")
        _expect(self.stream is not None, "skipped: no gRPC stream to count")
        n = len(self.stream.pieces)
        _expect(n <= self.max_tokens + 1, f"{n} streamed responses for max_tokens={self.max_tokens}")
        return f"max_tokens={half} answer is a prefix; {n} streamed responses ≤ {self.max_tokens} tokens + final"

    def stop_words(self) -> str:
        _expect(self.stream is not None, "skipped: no gRPC stream to pick a stop word from")
        pieces = self.stream.pieces
        if len(pieces) < 3:  # one response (not decoupled): words of the text instead of token pieces
            pieces = re.findall(r"\s*\S+", self.stream.text)
        candidates = stop_word_candidates(pieces)
        _expect(bool(candidates), "no streamed piece is usable as a stop word")
        reference = self.need_reference()
        for word, through, before in candidates:
            text = generate(self.http, self.model, self.body(stop_words=[word]), self.timeout)["text_output"]
            if text in (through, before):
                self.stop_word = word
                return f"stopped at {word!r} ({len(text)} of {len(reference)} chars)"
            _expect(text == reference, f"stop word {word!r} gave {_short(text)}, neither stopped nor unchanged")
        raise CheckFailed(f"none of {[c[0] for c in candidates]} stopped generation")

    def bad_missing_input(self) -> str:
        body = {"text_input": self.prompt}
        return self.expect_error(lambda: generate(self.http, self.model, body, self.timeout), "max_tokens")

    def bad_dtype(self) -> str:
        inputs = self.tensors(self.prompt, self.max_tokens, stream=False)
        name = self.dialect.max_tokens
        inputs[name] = inputs[name].astype(np.float32)
        return self.expect_error(lambda: grpc_stream(self.grpc, self.model, inputs, timeout=self.timeout),
                                 "data-type", "datatype", "data type")

    def bad_empty_prompt(self) -> str:
        body = {"text_input": "", self.dialect.max_tokens: 4}
        return self.expect_error(lambda: generate(self.http, self.model, body, self.timeout), "empty")

    def bad_long_prompt(self) -> str:
        _expect(self.max_input_len is None or self.max_input_len <= MAX_TESTED_INPUT_LEN,
                f"not sent: the server's max_input_len ({self.max_input_len}) is more than the {MAX_TESTED_INPUT_LEN:,} "
                "tokens this check sends at most")
        words = (self.max_input_len or 32768) + 16
        body = {"text_input": "hello " * words, self.dialect.max_tokens: 4}
        return self.expect_error(lambda: generate(self.http, self.model, body, self.timeout),
                                 "length", "long", "exceed")

    def bad_zero_tokens(self) -> str:
        return self.expect_error(lambda: generate(self.http, self.model, self.body(max_tokens=0), self.timeout),
                                 "max_tokens", "output")

    def huge_tokens(self) -> str:
        """TensorRT-LLM clamps an output length past max_seq_len (with a warning) or refuses it."""
        reference = self.need_reference()
        try:
            text = self.text(max_tokens=2**31 - 1)
        except ServerRequestError as exc:
            _expect(self.ready(), "server not ready after the request")
            return f"refused: {str(exc)[:120]}"
        _expect(text.startswith(reference.rstrip(REPLACEMENT)), f"clamped answer {_short(text)} does not extend the reference")
        _expect(self.ready(), "server not ready after the request")
        return f"clamped to the sequence limit ({len(text)} chars)"

    def bad_utf8(self) -> str:
        inputs = self.tensors(b"\xff\xfe caf\xe9", self.max_tokens, stream=False)
        return self.expect_error(lambda: grpc_stream(self.grpc, self.model, inputs, timeout=self.timeout), "utf-8", "utf8")

    def still_serving(self) -> str:
        reference = self.need_reference()
        text = self.text()
        _expect(text == reference, f"answer changed after the bad requests: {_short(text)}")
        return "ready, and the same answer as before"

    def bls_generate(self) -> str:
        reference = self.need_reference()
        text = self.text(model=self.bls)
        _expect(text == reference, f"BLS {_short(text)} differs from {self.model} {_short(reference)}")
        return f"equals {self.model}"

    def bls_stream(self) -> str:
        reference = self.need_reference()
        result = self.stream_text(self.bls, self.max_tokens)
        _expect(result.error is None, f"stream error: {result.error}")
        ok, how = same_text(result.text, reference)
        _expect(ok, how)
        return f"{len(result.pieces)} responses; joined text {how} to {self.model}"

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        """The checks to run, in order (a check may need the answers of earlier ones)."""
        checks = [
            ("server live and ready", self.live),
            ("every model ready", self.models_ready),
            ("model metadata equals config", self.metadata),
            ("HTTP generate (non-streaming)", self.first_generate),
            ("HTTP infer", self.infer),
        ]
        if {"preprocessing", "postprocessing"} <= set(self.models):
            checks.append(("HTTP infer preprocessing → postprocessing", self.infer_tokenizer_round_trip))
        checks += [
            ("gRPC streaming", self.grpc_streaming),
            ("HTTP generate_stream (SSE)", self.sse_streaming),
            ("greedy answers deterministic", self.deterministic),
            ("max_tokens honoured", self.max_tokens_honoured),
            ("stop words honoured", self.stop_words),
            ("bad request: missing input", self.bad_missing_input),
            ("bad request: wrong dtype", self.bad_dtype),
            ("bad request: empty prompt", self.bad_empty_prompt),
            ("bad request: prompt over max_input_len", self.bad_long_prompt),
            ("bad request: max_tokens 0", self.bad_zero_tokens),
            ("request: huge max_tokens", self.huge_tokens),
            ("bad request: non-UTF-8 bytes", self.bad_utf8),
            ("server still serving", self.still_serving),
        ]
        if self.bls and self.bls in self.models:
            checks += [("BLS generate (non-streaming)", self.bls_generate), ("BLS gRPC streaming", self.bls_stream)]
        return checks

    def run(self) -> SmokeReport:
        head = 3  # live, models ready, metadata: they find the models the rest of the plan depends on
        for name, fn in self.plan()[:head]:
            self.check(name, fn)
        for name, fn in self.plan()[head:]:
            self.check(name, fn)
        down = down_models([c.detail for c in self.report.checks])
        if down:
            self.report.down_models = down
            self.report.checks.append(Check(
                "models up", False,
                f"model {', '.join(repr(m) for m in down)} is down: its Python backend stub died. Triton 2.51 "
                "still reports it ready and never restarts it; restart the server (see its log and dmesg)"))
        return self.report


def max_input_len_from_server(http_url: str, engine_model: str = "tensorrt_llm") -> Optional[int]:
    """The engine's prompt limit: the CPU engine's parameter, or, when the engine folder is readable from
    here (same machine), the limit the C++ runtime derives from it (generator.engine.facts.runtime_limits)."""
    try:
        params = get_json(http_url, f"/v2/models/{engine_model}/config").get("parameters", {})
        value, engine_dir, chunked = (str(params.get(k, {}).get("string_value", ""))
                                      for k in ("max_input_len", "gpt_model_path", "enable_chunked_context"))
    except UNREADABLE:
        return None
    if value.isascii() and value.isdigit() and len(value) < 19:  # "²" is a digit to isdigit, not to int
        return int(value)
    try:
        engine = read_engine_if_built(Path(engine_dir)) if engine_dir else None
    except TritongenError:
        return None
    if engine is None:
        return None
    return runtime_limits(engine, chunked_context=chunked.lower() in ("true", "1", "yes")).max_input_len


def served_dialect(http_url: str, model: str) -> Dialect:
    """The dialect of the served model, from its config's input names; ENSEMBLE when it cannot be read."""
    try:
        return dialect_for_inputs({i["name"] for i in get_json(http_url, f"/v2/models/{model}/config").get("input", [])})
    except UNREADABLE:
        return ENSEMBLE


def admin_headers(admin_key: Optional[str]) -> Optional[dict[str, str]]:
    """The header a server tritongen started wants on its admin APIs (the repository index is one)."""
    from generator.serve.install import ADMIN_HEADER

    return {ADMIN_HEADER: admin_key} if admin_key else None
