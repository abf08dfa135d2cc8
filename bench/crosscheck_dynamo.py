"""Cross-check on an OpenAI-compatible server: tritongen's ``openai-chat`` user against NVIDIA AIPerf, both
streaming ``/v1/chat/completions`` from NVIDIA Dynamo's frontend + mocker (tests/dynamo_mocker.py).

Both tools send the same concurrency, prompt length and request count, with the same replayed 16-token answer
(``nvext.annotations``); they take turns for several rounds so each one's difference can be read against its
own run-to-run spread. Compared: TTFT, per-request ITL ((E2E - TTFT) / (tokens - 1); AIPerf's
inter_token_latency), ITL per gap (AIPerf's inter_chunk_latency) and end-to-end latency.

    python3.11 -m venv /tmp/aiperf-venv && /tmp/aiperf-venv/bin/pip install aiperf==0.13.0
    make setup-dynamo
    .venv/bin/python bench/crosscheck_dynamo.py --model-dir TINY_MODEL_DIR --aiperf /tmp/aiperf-venv/bin/aiperf

TINY_MODEL_DIR: any model folder with config.json and tokenizer.json (``tritongen demo`` makes one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from crosscheck_aiperf import add_run_args, compare_rounds, run_aiperf  # noqa: E402
from dynamo_mocker import DynamoMocker, replay_trace  # noqa: E402

FIGURES = ("ttft", "itl", "itl_gap", "e2e")
REPLAY = {"nvext": {"annotations": ["output_replay_id:r0"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--speedup-ratio", type=float, default=1.0)
    add_run_args(parser, "bench-out/crosscheck-dynamo", 80)
    args = parser.parse_args()

    from generator.measure.runner import run_loadtest
    from generator.spec import load_spec

    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir.resolve()
    replay_trace(args.out / "replay.jsonl", model_dir, rows=1, output_tokens=args.tokens)
    spec = load_spec(None, [
        "loadtest.protocol=openai-chat", f"loadtest.tokenizer={model_dir}", f"loadtest.users={args.users}",
        f"loadtest.spawn_rate={args.users}", f"loadtest.max_requests={args.requests}", "loadtest.duration_s=600",
        "loadtest.warmup_requests=2", f"loadtest.input_tokens_mean={args.input_tokens}",
        f"loadtest.output_tokens_mean={args.tokens}", "loadtest.num_prompts=32",
        f"loadtest.openai_body={json.dumps(REPLAY)}",
    ])
    rows: dict[str, dict] = {}
    with DynamoMocker(model_dir, replay=args.out / "replay.jsonl", speedup_ratio=args.speedup_ratio,
                      log_dir=args.out) as server:
        def locust(name: str) -> None:
            out = args.out / name
            out.mkdir(exist_ok=True)
            res = run_loadtest(spec, out, url=server.url, title=name).results
            lat = res.latency_ms.model_dump()
            rows[name] = {"ttft": lat["ttft"], "itl": lat["itl_request"], "itl_gap": lat["itl"], "e2e": lat["e2e"],
                          "requests": res.counts.ok, "errors": res.counts.errors}

        def aiperf(name: str) -> None:
            figures = run_aiperf(args, name, ["--model-names", server.model_name, "--url", server.url,
                                              "--endpoint-type", "chat", "--extra-inputs", json.dumps(REPLAY)], model_dir)
            rows[name] = {**figures, "itl": figures["aiperf_itl"]}

        for i in range(args.rounds):  # alternate, so drifts of the machine hit both alike
            locust(f"locust-{i}")
            aiperf(f"aiperf-{i}")

    print(f"{args.users} concurrent chat streams to Dynamo's frontend + mocker (speedup {args.speedup_ratio:g}), "
          f"{args.input_tokens} tokens in, {args.tokens} out, {args.requests} requests per run, "
          f"{args.rounds} alternating rounds; ms")
    summary = compare_rounds(rows, args.rounds, FIGURES)
    (args.out / "crosscheck.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
