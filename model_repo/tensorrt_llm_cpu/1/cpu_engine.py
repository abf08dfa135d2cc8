"""The CPU reference engine: transformers' continuous batching behind TensorRT-LLM's request semantics.

``CpuEngine`` owns one ``ContinuousBatchingManager`` (paged KV cache, in-flight batching) and does
what the C++ ``tensorrtllm`` backend and its executor do around the model: admission by the batch
scheduler policy, end_id and stop words, streaming of new tokens only, exclude_input_in_output,
cancellation that frees KV blocks, and per-request perf metrics on the steady clock. It knows
nothing about Triton: responses go to a ``ResponseSink`` (numpy tensors in, Triton's sender out,
or a list in tests). What it refuses before queuing, and a failed row's error response, are
``engine_requests``.

Clock: ``time.perf_counter_ns``, which on Linux reads CLOCK_MONOTONIC, the clock behind the C++
backend's ``std::chrono::steady_clock``, so the timestamps compare with any other monotonic
timestamp taken on the same machine.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from engine_requests import ResponseSink, RowGroup, blocks_for, check_request
from engine_settings import MIB, EngineSettings, kv_bytes_per_block, resolve_num_blocks, working_memory
from model_common import RequestError, ServerBusy, ServerFault
from trtllm_io import GenerationRequest, PerfMetrics, response_tensors

_PREFILLING = 1  # transformers' RequestStatus.PREFILLING: a request still in its context phase


def load_model(weights_dir: str, dtype: str, threads: int | None = None):
    """The served model: a ModelOpt checkpoint dequantized (or plain HF weights) by ``load_causal_lm``."""
    import torch

    from modelopt_checkpoint import load_causal_lm

    if threads:
        torch.set_num_threads(threads)
    return load_causal_lm(weights_dir, dtype=getattr(torch, dtype))


@dataclass
class _Sequence:
    rid: str
    request: GenerationRequest
    group: RowGroup
    blocks: int  # blocks for prompt plus all output tokens, reserved under guaranteed_no_evict
    perf: PerfMetrics
    tokens: list[int] = field(default_factory=list)  # accepted output tokens (end_id excluded)
    seen: int = 0  # generated tokens read from the manager (end_id included)
    sent: int = 0  # output tokens already streamed
    admitted: bool = False


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for TensorRT-LLM's ``nv_trt_llm_*`` metric families and for tests."""

    active_requests: int
    waiting_requests: int
    scheduled_requests: int
    context_requests: int
    max_requests: int
    max_blocks: int
    used_blocks: int
    free_blocks: int
    tokens_per_block: int
    reused_blocks: int
    alloc_total_blocks: int
    """Context blocks of every request so far (reused + new), as the backend's ``alloc_total`` gauge."""
    alloc_new_blocks: int
    iterations: int


class CpuEngine:
    """In-flight batching over transformers' ``ContinuousBatchingManager`` with TensorRT-LLM semantics."""

    def __init__(self, settings: EngineSettings, model, *, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.model = model
        self.log = log
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        self.bytes_per_block = kv_bytes_per_block(model.config, settings.dtype, settings.tokens_per_block)
        self.num_blocks, self.num_blocks_reason = resolve_num_blocks(settings, self.bytes_per_block)
        self.memory = working_memory(settings, self.bytes_per_block, self.num_blocks)
        self._lock = threading.RLock()
        self._waiting: deque[_Sequence] = deque()
        self._active: dict[str, _Sequence] = {}
        self._reserved = 0
        self._counter = 0
        self._prefix_tokens: dict[str, int] = {}
        self._reused_total = self._alloc_total = 0
        self._stopping = threading.Event()
        self._manager = None
        self._selector = None
        self._cache = None
        self._dispatcher: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the manager and its paged cache, install the hooks, start the generation and output threads."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from cpu_sampling import TrtllmTokenSelector

        s = self.settings
        cb_config = ContinuousBatchingConfig(
            page_size=s.tokens_per_block,
            num_blocks=self.num_blocks,
            max_batch_tokens=s.batch_tokens,
            max_requests_per_batch=s.max_batch_size,
            allow_block_sharing=s.enable_kv_cache_reuse,
            use_async_batching=False,
            scheduler_type="fifo",
            # guaranteed_no_evict admits only what fits, so the manager never needs its eviction headroom
            safety_margin=0.0 if s.guaranteed_no_evict else None,
        )
        if s.cpu_step_delay_ms:
            self._slow_down(s.cpu_step_delay_ms / 1000.0)
        generation_config = GenerationConfig(do_sample=False, eos_token_id=-1, max_new_tokens=1)
        manager = self.model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config
        )
        self._selector = TrtllmTokenSelector()
        manager.logit_processor = self._selector.as_processor_list()
        manager.warmup()  # builds the batch processor (and its cache) now, so the hooks go in before any request
        self._cache = manager.batch_processor.cache
        self._hook_prefix_matches(self._cache)
        self._manager = manager
        manager.start()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="cpu-engine-output", daemon=True)
        self._dispatcher.start()
        self.log(self.describe())

    def _slow_down(self, seconds: float) -> None:
        """Every forward pass (one per engine step) takes ``seconds`` longer: a known per-token slowdown."""
        forward = self.model.forward

        def slowed(*args, **kwargs):
            time.sleep(seconds)
            return forward(*args, **kwargs)

        self.model.forward = slowed

    def describe(self) -> str:
        s = self.settings
        return (
            "CPU reference engine: "
            f"weights={s.weights_dir} dtype={s.dtype} threads={s.cpu_threads or 'torch default'}; "
            f"tokens_per_block={s.tokens_per_block} -> page_size; "
            f"KV blocks={self.num_blocks} ({self.num_blocks_reason}; {self.bytes_per_block} B per block, "
            f"{self.num_blocks * s.tokens_per_block} tokens); "
            f"max_num_tokens={s.max_num_tokens} cpu_max_batch_tokens={s.cpu_max_batch_tokens} -> "
            f"max_batch_tokens {s.batch_tokens}; "
            f"working memory {sum(self.memory.values()) / MIB:.0f} MiB ("
            + ", ".join(f"{k} {v / MIB:.0f} MiB" for k, v in self.memory.items()) + "); "
            f"max_queue_size={s.max_queue_size or 'unbounded'}; "
            f"max_batch_size={s.max_batch_size} -> max_requests_per_batch and max active requests; "
            f"enable_kv_cache_reuse={s.enable_kv_cache_reuse} -> allow_block_sharing; "
            f"batch_scheduler_policy={s.batch_scheduler_policy}; "
            f"enable_chunked_context={s.enable_chunked_context}; "
            f"max_input_len={s.max_input_len} max_seq_len={s.max_seq_len}; "
            f"exclude_input_in_output={s.exclude_input_in_output}"
        )

    def shutdown(self) -> None:
        self._stopping.set()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)
        with self._lock:
            for seq in list(self._active.values()) + list(self._waiting):
                self._end_row(seq, error=ServerBusy("the model is being unloaded; retry"))
        if self._manager is not None:
            self._manager.stop(block=True, timeout=10)

    def _hook_prefix_matches(self, cache) -> None:
        """Record, per request, how many prompt tokens the cache matched: the source of kv_cache_reused_blocks."""
        original = cache.search_prefix_match

        def search_prefix_match(request_id, prompt_ids):
            matched = original(request_id, prompt_ids)
            self._prefix_tokens[request_id] = matched
            return matched

        cache.search_prefix_match = search_prefix_match

    # ------------------------------------------------------------------ requests

    def submit(
        self, rows: list[GenerationRequest], sink: ResponseSink, *, arrival_ns: int, triton_id: str = ""
    ) -> None:
        """Queue the rows of one Triton request; all rows are checked first, so a bad row rejects them all.

        Raises ServerBusy when ``max_queue_size`` requests already wait for a batch slot."""
        for row in rows:
            check_request(row, self.settings, self.vocab_size, self.num_blocks)
        group = RowGroup(sink=sink, triton_id=triton_id, pending=len(rows))
        with self._lock:
            limit = self.settings.max_queue_size
            if limit and len(self._waiting) + len(rows) > limit:
                raise ServerBusy(f"server busy: {len(self._waiting)} requests already wait for the engine "
                                 f"(max_queue_size {limit}); retry later")
            for row in rows:
                self._counter += 1
                seq = _Sequence(
                    rid=f"trt-{self._counter}", request=row, group=group, blocks=blocks_for(row, self.settings.tokens_per_block),
                    perf=PerfMetrics(arrival_time_ns=arrival_ns),
                )
                self._waiting.append(seq)
            self._admit()

    def stop_request(self, triton_id: str, input_ids: list[int]) -> None:
        """The ``stop`` input: end the requests with this Triton request id whose prompt is ``input_ids``.

        NVIDIA's backend cancels every request with the id, so any client that guesses an id (ids are
        the clients' own, often a counter) stops another client's generation. Here the stop must also
        repeat the prompt, which only the client that sent it knows; a stop that matches nothing is
        answered the same way, so it tells nothing about other clients' requests."""
        if not triton_id:
            raise RequestError("Trying to stop a request but request ID is not provided")
        with self._lock:
            seqs = list(self._active.values()) + list(self._waiting)
            groups = {id(s.group) for s in seqs if s.group.triton_id == triton_id and s.request.input_ids == input_ids}
            for seq in [s for s in seqs if id(s.group) in groups]:  # every row of a stopped request
                self._finish(seq, cancel_engine=True)

    def _admit(self) -> None:
        """Move waiting requests into the manager while the batch size and (guaranteed_no_evict) KV blocks allow."""
        s = self.settings
        while self._waiting:
            seq = self._waiting[0]
            if len(self._active) >= s.max_batch_size:
                return
            if s.guaranteed_no_evict and self._reserved + seq.blocks > self.num_blocks:
                return
            end_id = seq.request.end_id
            accepted = self._manager.add_request(
                seq.request.input_ids,
                request_id=seq.rid,
                max_new_tokens=seq.request.max_new_tokens,
                streaming=True,  # always: stop words, first-token times and cancellation need every step
                record_timestamps=True,
                eos_token_id=end_id if end_id is not None else -1,
                sampling=seq.request.sampling,
            )
            if accepted is None:  # the generation loop is down; the request waits for its restart
                return
            self._waiting.popleft()
            if s.guaranteed_no_evict:
                self._reserved += seq.blocks
            seq.admitted = True
            self._active[seq.rid] = seq

    # ------------------------------------------------------------------ output thread

    def _dispatch_loop(self) -> None:
        outputs = self._manager.output_router.output_queue
        period = self.settings.cancellation_check_period_ms / 1000.0
        next_check = time.monotonic() + period
        while not self._stopping.is_set():
            try:
                output = outputs.get(timeout=0.02)
            except queue.Empty:
                output = None
            with self._lock:
                if output is not None:
                    self._on_output(output)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + period
                    self._check_cancelled()
                    self._check_manager()
                self._admit()

    def _check_cancelled(self) -> None:
        for seq in list(self._active.values()) + list(self._waiting):
            try:
                cancelled = seq.group.sink.is_cancelled()
            except Exception:
                cancelled = True
            if cancelled:
                self._drop(seq)

    def _check_manager(self) -> None:
        """If the generation thread died, fail what it held and start it again: one bad batch must not end serving."""
        manager = self._manager
        if manager.is_running() or self._stopping.is_set():
            return
        error = manager.background_thread_status.fatal_error
        self.log(f"CPU reference engine: generation loop stopped ({error}); restarting it")
        for seq in list(self._active.values()):
            self._end_row(seq, error=ServerFault(f"engine error: {error}"))
        manager.start()

    def _on_output(self, output) -> None:
        seq = self._active.get(output.request_id)
        if seq is None:  # finished or cancelled here already; the manager may still deliver a step
            return
        if output.error is not None:
            self._end_row(seq, error=ServerFault(
                f"Executor failed process request due to the following error: {output.error}"))
            return
        failure = self._selector.failure(seq.rid)
        if failure is not None:  # this request's token choice failed; the rest of the step went on
            self.log(f"CPU reference engine: request {seq.rid} ({seq.group.triton_id!r}) failed: {failure}")
            self._end_row(seq, error=ServerFault(f"sampling failed for this request: {failure}"))
            return
        perf = seq.perf
        if not perf.first_scheduled_time_ns and output.lifespan[0] > 0:
            perf.first_scheduled_time_ns = int(output.lifespan[0] * 1e9)
            self._count_blocks(seq)
        generated = output.generated_tokens
        stamps = output.timestamps or []
        request = seq.request
        done = False
        last_ns = 0
        while seq.seen < len(generated) and not done:
            token = generated[seq.seen]
            last_ns = int(stamps[seq.seen] * 1e9) if seq.seen < len(stamps) else time.perf_counter_ns()
            seq.seen += 1
            if not perf.first_token_time_ns:
                perf.first_token_time_ns = last_ns
            if token == request.end_id:
                done = True  # end_id stops the sequence and is not returned, as in TensorRT-LLM
                break
            seq.tokens.append(token)
            done = len(seq.tokens) >= request.max_new_tokens or self._hit_stop_word(seq)
        if done or output.is_finished():
            perf.last_token_time_ns = last_ns or time.perf_counter_ns()
            self._finish(seq, cancel_engine=not output.is_finished())
        elif request.streaming and seq.sent < len(seq.tokens):
            self._send_tokens(seq, final=False)

    @staticmethod
    def _hit_stop_word(seq: _Sequence) -> bool:
        """A stop word ends the sequence when the newest tokens complete it; its tokens stay in the output."""
        if not seq.request.stop_words:
            return False
        tail = seq.request.input_ids + seq.tokens
        return any(len(w) <= len(tail) and tail[-len(w):] == w for w in seq.request.stop_words)

    def _count_blocks(self, seq: _Sequence) -> None:
        """Context blocks of the request, and how many came from the prefix cache (TensorRT-LLM's addSequence)."""
        tpb = self.settings.tokens_per_block
        total = math.ceil(len(seq.request.input_ids) / tpb)
        reused = min(total, self._prefix_tokens.pop(seq.rid, 0) // tpb)
        seq.perf.kv_cache_alloc_total_blocks = total
        seq.perf.kv_cache_reused_blocks = reused
        seq.perf.kv_cache_alloc_new_blocks = total - reused
        self._reused_total += reused
        self._alloc_total += total

    # ------------------------------------------------------------------ responses

    def _send_tokens(self, seq: _Sequence, final: bool) -> None:
        request = seq.request
        if request.streaming:
            start, tokens = seq.sent, seq.tokens[seq.sent:]
        else:
            start, tokens = 0, seq.tokens
        log_probs = cum = None
        if request.return_log_probs:
            log_probs = self._selector.log_probs(seq.rid, 0, len(seq.tokens))
            cum = float(sum(log_probs))
            log_probs = log_probs[start:start + len(tokens)]
        if not request.streaming and not request.exclude_input_in_output:
            tokens = request.input_ids + tokens
        seq.sent = len(seq.tokens)
        tensors = response_tensors(request, tokens, log_probs=log_probs, cum_log_prob=cum, perf=seq.perf)
        last = seq.group.row_done() if final else False
        try:
            seq.group.sink.send(tensors, final=last)
        except Exception as exc:  # the client is gone; its blocks are freed all the same
            self.log(f"CPU reference engine: could not send a response ({exc})")
            if last:  # still end the stream: a BLS caller reads it to its final response
                seq.group.close()

    def _finish(self, seq: _Sequence, *, cancel_engine: bool) -> None:
        """Send the final response of a row and release what it holds."""
        if not seq.perf.last_token_time_ns:
            seq.perf.last_token_time_ns = time.perf_counter_ns()
        self._send_tokens(seq, final=True)
        self._release(seq, cancel_engine=cancel_engine)

    def _end_row(self, seq: _Sequence, *, error: Exception) -> None:
        self._release(seq, cancel_engine=True)
        seq.group.send_error(error, self.log)

    def _drop(self, seq: _Sequence) -> None:
        """A cancelled or disconnected client: free its blocks, close its stream without output."""
        self._release(seq, cancel_engine=True)
        if seq.group.row_done():
            seq.group.close()

    def _release(self, seq: _Sequence, *, cancel_engine: bool) -> None:
        if seq.admitted:
            self._active.pop(seq.rid, None)
            if self.settings.guaranteed_no_evict:
                self._reserved -= seq.blocks
            if cancel_engine:
                self._manager.cancel_request(seq.rid)
            self._selector.release(seq.rid)
            self._prefix_tokens.pop(seq.rid, None)
            seq.admitted = False
        elif seq in self._waiting:
            self._waiting.remove(seq)

    # ------------------------------------------------------------------ statistics

    def kv_blocks_in_use(self) -> int:
        """Blocks referenced by live requests (cached prefix blocks kept for reuse count as free)."""
        if self._cache is None:
            return 0
        used = set()
        for allocator in self._cache.cache_allocators.values():
            used.update(*list(allocator.block_table.values()))
        return len(used)

    def stats(self) -> EngineStats:
        manager = self._manager
        scheduler = manager.batch_processor.scheduler if manager and manager.batch_processor else None
        in_manager_waiting = len(scheduler.waiting_requests) if scheduler else 0
        states = list(scheduler.active_requests.values()) if scheduler else []  # copied at once: the loop mutates it
        prefilling = sum(1 for st in states if st.status == _PREFILLING)
        with self._lock:
            active = len(self._active)
            waiting = len(self._waiting)
        used = self.kv_blocks_in_use()
        return EngineStats(
            active_requests=active,
            waiting_requests=waiting + in_manager_waiting,
            scheduled_requests=max(0, active - in_manager_waiting),
            context_requests=prefilling,
            max_requests=self.settings.max_batch_size,
            max_blocks=self.num_blocks,
            used_blocks=used,
            free_blocks=max(0, self.num_blocks - used),
            tokens_per_block=self.settings.tokens_per_block,
            reused_blocks=self._reused_total,
            alloc_total_blocks=self._alloc_total,
            alloc_new_blocks=self._alloc_total - self._reused_total,
            iterations=int(getattr(manager, "current_batch", 0) or 0),
        )
