"""tune: the goodput search finds a known capacity within its interval, re-measures a level that straddles the
target and reports it unresolved, never uses a client-limited level, stops a level that fell behind, keeps
to its budget; settings refused or skipped cost no load; and one search runs against a real server whose
capacity is known (tests/slots_model: a fixed number of slots, a fixed time per token)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from generator.measure.attainment import RequestRow, level_figures
from generator.measure.goodput import LevelVerdict, RoundSample, search
from generator.measure.intervals import Interval
from generator.measure.predict import Prediction
from generator.measure.tune import Budget, pareto_front, skip_reason
from generator.measure.tune_results import Goodput, SettingResult, SettingStatus
from generator.spec import TuneSpec

SLOTS_MODEL = Path(__file__).parent / "slots_model"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


class SimulatedServer:
    """``capacity`` requests served at once, each ``service_s`` long; above it the extra requests wait and miss
    the SLO. ``misses`` forces a number of misses per round at a load; ``client_limited_from`` marks rounds
    at that load or above as limited by the load generator (their requests would all pass)."""

    def __init__(self, capacity: int, service_s: float = 0.5, n: int = 80, misses: dict[float, int] | None = None,
                 client_limited_from: float | None = None, limited_rounds: set[tuple[float, int]] = frozenset()) -> None:
        self.capacity, self.service_s, self.n = capacity, service_s, n
        self.misses, self.client_limited_from, self.limited_rounds = misses or {}, client_limited_from, limited_rounds
        self.calls: list[tuple[float, int]] = []
        self.clock = 0.0

    def __call__(self, load: float, rnd: int) -> RoundSample:
        self.calls.append((load, rnd))
        limited = ((self.client_limited_from is not None and load >= self.client_limited_from)
                   or (load, rnd) in self.limited_rounds)
        busy = min(load, self.capacity)
        if load in self.misses:
            missed = self.misses[load]
        elif limited or load <= self.capacity:
            missed = 0
        else:  # the share of requests that found every slot busy
            missed = round(self.n * (load - self.capacity) / load)
        rows = []
        for i in range(self.n):
            end = self.clock + (i + 1) * self.service_s / busy
            miss = i < missed
            rows.append(RequestRow(ok=True, start_s=end - self.service_s, end_s=end, ttft_ms=900.0 if miss else 100.0,
                                   itl_ms=10.0, e2e_ms=self.service_s * 1e3, lateness_ms=0.0, output_tokens=10,
                                   misses=("ttft_p95",) if miss else ()))
        self.clock += self.n * self.service_s / busy + 1
        return RoundSample(rows=rows, client_limited=limited, client_reasons=("CPU 95%",) if limited else ())


def test_search_finds_the_known_goodput_within_its_interval():
    server = SimulatedServer(capacity=6, service_s=0.5)
    outcome = search(server, TuneSpec(), open_loop=False)
    assert outcome.goodput_load == 6 and outcome.breaking_load == 7 and outcome.resolved
    assert [lv.load for lv in outcome.levels] == [1, 2, 4, 8, 6, 7]  # grow by doubling, then bisect
    assert outcome.broke_first == "ttft_p95"
    rps = outcome.level(6).figures.requests_per_s
    assert rps.contains(6 / 0.5) and outcome.level(6).figures.requests == 80  # known capacity: 6 slots / 0.5 s
    assert outcome.level(6).figures.attainment.low >= 0.95


def test_a_straddling_level_is_measured_again_then_reported_unresolved_and_never_counted():
    # at load 4, 4 of every 80 requests miss: 95.0% exactly, an interval that never clears 0.95
    server = SimulatedServer(capacity=8, misses={4: 4})
    outcome = search(server, TuneSpec(max_rounds=3), open_loop=False)
    level4 = outcome.level(4)
    assert level4.verdict is LevelVerdict.UNRESOLVED and level4.rounds == 3 and level4.figures.requests == 240
    assert [c for c in server.calls if c[0] == 4] == [(4, 0), (4, 1), (4, 2)]
    assert outcome.goodput_load == 3 and outcome.breaking_load is None and not outcome.resolved
    assert "between 3 (pass) and 4 (unresolved)" in outcome.note  # the bracket's top as measured, not "fail"
    # a share that clears the target on a second round passes (pooled: 1 miss in 160)
    server = SimulatedServer(capacity=8, misses={2: 1})
    level2 = search(server, TuneSpec(), open_loop=False).level(2)
    assert level2.verdict is LevelVerdict.PASS and level2.rounds == 2


def test_a_client_limited_level_is_never_a_verdict():
    server = SimulatedServer(capacity=64, client_limited_from=8)
    outcome = search(server, TuneSpec(max_rounds=3), open_loop=False)
    assert outcome.levels[-1].load == 8 and outcome.levels[-1].verdict is LevelVerdict.CLIENT_LIMITED
    assert outcome.goodput_load == 4 and outcome.breaking_load is None and not outcome.resolved
    assert "load generator" in outcome.note and server.calls[-3:] == [(8, 0), (8, 1), (8, 2)]  # nothing above 8
    assert outcome.levels[-1].client_reasons == ["CPU 95%"]


def test_a_client_limited_round_is_set_aside_and_the_level_measured_again():
    # load 16 is beyond capacity (every fourth request waits): its first round, limited by the client, would pass
    server = SimulatedServer(capacity=12, limited_rounds={(16, 0)})
    outcome = search(server, TuneSpec(), open_loop=False)
    level16 = outcome.level(16)
    assert level16.verdict is LevelVerdict.FAIL and level16.rounds == 2 and level16.figures.requests == 80
    assert "1 client-limited round(s) set aside" in level16.reason and outcome.goodput_load == 12


def test_a_level_that_fell_behind_fails_without_more_rounds():
    rows = [RequestRow(ok=True, start_s=i * 0.1, end_s=i * 0.1 + 1, ttft_ms=50.0 + 20 * i, itl_ms=10.0, e2e_ms=1000.0,
                       lateness_ms=0.0, output_tokens=10, misses=("ttft_p95",) if i % 12 == 0 else ())
            for i in range(40)]
    calls = []

    def measure(load, rnd):
        calls.append(load)
        return RoundSample(rows=rows)

    outcome = search(measure, TuneSpec(start_users=4, max_users=4), open_loop=False)
    level = outcome.levels[0]
    assert level.verdict is LevelVerdict.FAIL and level.rounds == 1 and "fell behind" in level.reason
    assert level.figures.ttft_growth > 2 and level.figures.attainment.high >= 0.95  # straddled, yet decided


def test_open_loop_bisects_rates_to_the_resolution():
    def measure(rate, rnd):  # passes up to 10 requests/s
        ok = rate <= 10
        return RoundSample(rows=[RequestRow(ok=True, start_s=i / rate, end_s=i / rate + 0.2, ttft_ms=10.0, itl_ms=1.0,
                                            e2e_ms=200.0, lateness_ms=0.0, output_tokens=4,
                                            misses=() if ok or i % 2 else ("ttft_p95",)) for i in range(80)])

    outcome = search(measure, TuneSpec(start_rate=1.0, rate_resolution=0.1), open_loop=True)
    assert outcome.resolved and 9.0 <= outcome.goodput_load <= 10 < outcome.breaking_load <= outcome.goodput_load * 1.1


@pytest.mark.parametrize("start, resolution", [(1.0, 0.0001), (0.002, 0.1)])
def test_open_loop_bisection_ends_where_rates_cannot_be_told_apart(start, resolution):
    """review9: rates are rounded to 3 decimals; a bracket narrower than that (a fine rate_resolution, or rates below
    ~0.01/s) made the midpoint round onto its end, which was measured again for ever."""
    measured = []

    def measure(rate, rnd):  # passes up to three quarters of the start rate
        measured.append(rate)
        assert len(measured) < 100, measured[-10:]
        ok = rate <= start * 0.75
        return RoundSample(rows=[RequestRow(ok=True, start_s=i / rate, end_s=i / rate + 0.2, ttft_ms=10.0, itl_ms=1.0,
                                            e2e_ms=200.0, lateness_ms=0.0, output_tokens=4,
                                            misses=() if ok or i % 2 else ("ttft_p95",)) for i in range(80)])

    outcome = search(measure, TuneSpec(start_rate=start, rate_resolution=resolution), open_loop=True)
    assert outcome.goodput_load <= start * 0.75 < outcome.breaking_load and len(set(measured)) == len(measured)


@pytest.mark.parametrize("start", [0.005, 0.001, 0.0004])
def test_halving_a_failing_rate_ends_where_rates_cannot_be_told_apart(start):
    """review19: a failing level's rate is halved and rounded to 3 decimals: below a start rate of 0.008/s the
    halving reached 0.001/s, which halves onto itself, and a server failing every level was measured for ever
    (0.0004/s halved to 0, a rate no load test takes)."""
    measured = []

    def measure(rate, rnd):  # every request misses
        measured.append(rate)
        assert len(measured) < 20 and rate > 0, measured[-10:]
        return RoundSample(rows=[RequestRow(ok=True, start_s=i / rate, end_s=i / rate + 0.2, ttft_ms=900.0, itl_ms=1.0,
                                            e2e_ms=200.0, lateness_ms=0.0, output_tokens=4, misses=("ttft_p95",))
                                 for i in range(80)])

    outcome = search(measure, TuneSpec(start_rate=start), open_loop=True)
    assert outcome.goodput_load is None and "did not pass" in outcome.note and len(set(measured)) == len(measured)


def test_the_budget_stops_new_rounds_and_says_so():
    ticks = iter(range(100))
    budget = Budget(minutes=3, clock=lambda: next(ticks) * 60.0)  # each look at the clock: one more minute
    outcome = search(SimulatedServer(capacity=64), TuneSpec(), open_loop=False, time_left=budget.ok)
    assert len(outcome.levels) == 2 and "budget" in outcome.note  # minutes 1 and 2; at 3 the budget is spent


def test_level_figures_carry_their_request_counts():
    rows = [RequestRow(ok=i % 10 != 0, start_s=i, end_s=i + 1.0, ttft_ms=10.0 * i, itl_ms=1.0, e2e_ms=1000.0,
                       lateness_ms=0.0, output_tokens=5, misses=("error",) if i % 10 == 0 else ()) for i in range(50)]
    f = level_figures(rows)
    assert (f.requests, f.met, f.misses) == (50, 45, {"error": 5})
    assert f.attainment.n == 50 and 8 <= f.requests_per_s.n <= 45 and f.ttft_p95_ms.n == 45
    assert f.ttft_p95_ms.low <= f.ttft_p95_ms.estimate <= f.ttft_p95_ms.high


def _measured(label: str, overrides: list[str], broke: float, kv: int) -> SettingResult:
    from generator.measure.goodput import SearchOutcome

    return SettingResult(label=label, overrides=overrides, dir="", gpus=1, status=SettingStatus.MEASURED,
                         prediction=Prediction(batch_slots=8, kv_requests=kv, concurrency=8, source="t"),
                         search=SearchOutcome(levels=[], goodput_load=broke - 1, breaking_load=broke, broke_first="ttft_p95",
                                              resolved=True, note="", step=1.0))


def test_more_batch_slots_than_a_measured_setting_ever_used_are_skipped_with_the_reason():
    done = [_measured("mbs=8", ["serving.max_batch_size=8", "serving.cpu_kv_cache_mib=4"], broke=5, kv=30)]
    same_kv = Prediction(batch_slots=16, kv_requests=30, concurrency=16, source="t")
    why = skip_reason(["serving.max_batch_size=16", "serving.cpu_kv_cache_mib=4"], same_kv, done)
    assert "cannot beat mbs=8" in why and "5 users" in why
    more_kv = Prediction(batch_slots=16, kv_requests=60, concurrency=16, source="t")
    assert skip_reason(["serving.max_batch_size=16", "serving.cpu_kv_cache_mib=4"], more_kv, done) is None
    assert skip_reason(["serving.max_batch_size=4", "serving.cpu_kv_cache_mib=4"], same_kv, done) is None
    assert skip_reason(["serving.max_batch_size=16", "serving.cpu_kv_cache_mib=8"], same_kv, done) is None
    done_saturated = [_measured("mbs=8", ["serving.max_batch_size=8"], broke=16, kv=30)]  # its slots did bind
    assert skip_reason(["serving.max_batch_size=16"], same_kv, done_saturated) is None


def test_pareto_front_keeps_settings_no_other_beats_on_both_axes():
    def s(label, tps, ttft):
        iv = Interval(estimate=tps, low=tps, high=tps, confidence=0.95, n=80, method="t")
        lat = Interval(estimate=ttft, low=ttft, high=ttft, confidence=0.95, n=80, method="bootstrap")
        g = Goodput(load=1, requests=80, requests_per_s_per_gpu=iv, output_tokens_per_s_per_gpu=iv, attainment=iv,
                    ttft_p95_ms=lat, itl_p95_ms=None)
        return SettingResult(label=label, overrides=[], dir="", gpus=1, status=SettingStatus.MEASURED, goodput=g)

    assert pareto_front([s("a", 100, 50), s("b", 200, 80), s("c", 150, 90), s("d", 200, 100)]) == ["a", "b"]


def test_a_setting_the_spec_refuses_costs_no_load(tmp_path):
    from generator.measure.tune import tune_setting
    from generator.spec import load_spec

    steps = []
    result = tune_setting(load_spec(None, []), ["serving.max_batch_size=4096"], "mbs=4096", tmp_path / "s",
                          gpu_visible=False, open_loop=False, budget=Budget(None), done=[], progress=steps.append)
    assert result.status is SettingStatus.REFUSED and "exceeds build.max_batch_size" in result.reason
    assert result.search is None and steps == [] and not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def slots_repo(tmp_path_factory, tokenizer_weights_dir) -> Path:
    """tests/slots_model as a one-model repository: 2 slots, 3 tokens per answer 0.1 s apart (0.2 s a request)."""
    repo = tmp_path_factory.mktemp("slots-repo")
    shutil.copytree(SLOTS_MODEL / "1", repo / "slots" / "1")
    text = (SLOTS_MODEL / "config.pbtxt.in").read_text(encoding="utf-8")
    for key, value in (("TOKENIZER_DIR", str(tokenizer_weights_dir)), ("SLOTS", "2"), ("TOKEN_S", "0.1")):
        text = text.replace(key, value)
    (repo / "slots" / "config.pbtxt").write_text(text, encoding="utf-8")
    return repo


@pytest.mark.server
def test_search_against_a_server_of_known_capacity(slots_repo, tmp_path, alone):
    """2 slots of 0.2 s: 2 users pass (TTFT is the network's few ms), 3 do not (a third of the requests wait
    for a slot, up to 0.2 s, against an 80 ms TTFT limit); goodput 2 users, at most 10 requests/s. On a
    loaded machine a few requests of level 2 may miss too and leave it unresolved: then the search must
    settle below it, never above. Rounds of 40 requests against a 0.9 target (tune's defaults, 80 against 0.95,
    take twice as long): 40 of 40 within the SLO pass (Wilson's low end 0.912), and a level where even 30 of 40
    meet it fails (high end 0.858); measured: 40 of 40 at level 2, 20 of 40 at level 3."""
    from generator.measure.report_tune import write_tune_report
    from generator.measure.tune import goodput_of, round_measure
    from generator.measure.tune_results import TuneResult
    from generator.serve.server import TritonServer
    from generator.spec import load_spec

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"text": "hello world", "max_tokens": 3}\n{"text": "the triton model", "max_tokens": 3}\n')
    spec = load_spec(None, ["loadtest.model=slots", "loadtest.slo=ttft_p95<80ms", f"loadtest.prompts={prompts}",
                            "loadtest.output_tokens_mean=3", "loadtest.warmup_requests=2", "loadtest.request_timeout_s=30",
                            "tune.start_users=2", "tune.max_users=3", "tune.max_rounds=2", "tune.level_timeout_s=60",
                            "tune.requests_per_level=40", "tune.attainment=0.9"])
    # alone: the slots' times, not another test's load, decide who misses the SLO
    with TritonServer(slots_repo, log_file=tmp_path / "triton.log") as server, alone():
        outcome = search(round_measure(spec, server, tmp_path / "levels", False, lambda _m: None), spec.tune,
                         open_loop=False)
    # each round's folder is recorded relative to the setting's, so it survives the output's rename
    assert all((tmp_path / d / "records.jsonl").is_file() and not Path(d).is_absolute()
               for lv in outcome.levels for d in lv.dirs)
    limited = [lv for lv in outcome.levels if lv.verdict is LevelVerdict.CLIENT_LIMITED]
    assert not any(lv.load == outcome.goodput_load for lv in limited)  # a client-limited level is never the goodput
    assert outcome.goodput_load is None or outcome.goodput_load <= 2  # never above the known capacity
    level2, level3 = outcome.level(2), outcome.level(3)
    assert level2.verdict is not LevelVerdict.FAIL, level2.reason  # 2 slots serve 2 users without waiting
    assert level3 is None or level3.verdict is not LevelVerdict.PASS, level3.reason  # a third of them wait
    if level2.verdict is LevelVerdict.PASS:  # the usual case (a loaded machine may leave it unresolved)
        assert outcome.goodput_load == 2
        rps = level2.figures.requests_per_s
        assert rps.low <= 2 / 0.2 and rps.high >= 0.5 * 2 / 0.2  # the known capacity: 2 slots / 0.2 s
    goodput = goodput_of(outcome, gpus=1)
    setting = SettingResult(label="slots=2", overrides=[], dir=str(tmp_path), gpus=1, status=SettingStatus.MEASURED,
                            search=outcome, goodput=goodput)
    result = TuneResult(slo="ttft_p95<80ms", attainment=spec.tune.attainment, mode="closed loop", settings=[setting],
                        front=pareto_front([setting]), best=None, runner_up=None, budget_min=None, elapsed_s=1.0)
    write_tune_report(tmp_path / "report", result, [])
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "(n=" in md and "Levels measured" in md
    assert TuneResult.model_validate_json((tmp_path / "report" / "tune.json").read_text()) == result
    if CHROMIUM and goodput is not None:
        shot = tmp_path / "report.png"
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1200,2400", f"--screenshot={shot}", (tmp_path / "report" / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
        from matplotlib.image import imread

        img = imread(shot)[..., :3]
        green = (abs(img[..., 0] - 118 / 255) < 0.03) & (abs(img[..., 1] - 185 / 255) < 0.03) & (img[..., 2] < 0.05)
        assert green.sum() > 500  # the goodput bars, drawn in #76b900


@pytest.mark.parametrize("args, needle", [([], "tune needs an SLO"),
                                          (["--slo", "requests_per_s>5"], "not a per-request limit"),
                                          (["--slo", "ttft_p95<1s", "--attainment", "1.5"], "tune.attainment")])
def test_tune_refuses_bad_input_before_starting_anything(tmp_path, args, needle):
    from tests.test_cli import assert_user_error, tritongen

    proc = tritongen("tune", *args, "--set", "serving.max_batch_size=1,4", "-o", "out", cwd=tmp_path)
    assert_user_error(proc, 2, needle)
    assert not (tmp_path / "out").exists()


def test_repeats_say_whether_the_order_holds():
    from generator.measure.intervals import across_runs
    from generator.measure.tune import order_note
    from generator.measure.tune_results import RepeatResult

    def rep(label, values):
        return RepeatResult(label=label, load=4, runs=[], output_tokens_per_s_per_gpu=across_runs(values), passed=0)

    assert order_note(rep("a", [100, 102, 101]), rep("b", [80, 81, 79])).startswith("holds: over 3 runs")
    assert "overlap" in order_note(rep("a", [100, 90, 110]), rep("b", [95, 99, 97]))
    assert order_note(rep("a", [90, 91]), rep("b", [95, 96])).startswith("does not hold")
    assert "not repeated" in order_note(rep("a", [90]), rep("b", [95]))


def test_a_repeat_that_fails_is_reported_and_the_tune_keeps_its_output(tmp_path, monkeypatch):
    """review25: the repeat phase started a fresh server per repeat outside any error handling: one that was still
    loading at its start timeout (ServerNotReady; the settings phase counts that as a failed setting) or a failed
    load-test round ended `tritongen tune` with the error, its whole output (every setting measured) deleted and the
    error naming the repeat's triton.log inside it. Now the repeat is reported failed and the others go on."""
    from generator.errors import ServerNotReady
    from generator.measure.tune import goodput_of, order_note, repeat_level
    from generator.serve.server import TritonServer
    from generator.spec import load_spec

    def still_loading(self):
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.write_text("loading\n")
        raise ServerNotReady("the models were still loading after 600 s", where=str(self.log_file), fix="run again")

    monkeypatch.setattr(TritonServer, "__enter__", still_loading)
    spec = load_spec(None, ["tune.repeat=1"])
    outcome = search(SimulatedServer(capacity=4), TuneSpec(start_users=1, max_users=8), open_loop=False)
    measured = SettingResult(label="mbs=4", overrides=[], dir="settings/0", gpus=1, status=SettingStatus.MEASURED,
                             search=outcome, goodput=goodput_of(outcome, 1))
    steps = []
    repeat = repeat_level(spec, measured, tmp_path / "repeats" / "0", gpu_visible=False, open_loop=False,
                          budget=Budget(None), progress=steps.append)
    assert repeat.runs == [] and repeat.passed == 0 and len(repeat.failed) == 1
    assert repeat.failed[0].startswith("repeat 1 (repeats/0/0): ") and "still loading" in repeat.failed[0]
    assert (tmp_path / "repeats" / "0" / "0" / "triton.log").is_file()  # its log is kept with the output
    assert "1 repeat(s) failed" in order_note(repeat, repeat.model_copy(update={"failed": []}))


def test_a_setting_whose_server_died_mid_search_is_failed_naming_its_log_not_refused(tmp_path, monkeypatch):
    """review26: a setting's server that died during a round (killed for memory at a load too high) made the next
    round's reachability check raise ServerError ("no Triton server answers at http://127.0.0.1:PORT"): the setting was
    reported "refused" (no load sent, it cannot be served) with a --url fix. Now it failed, naming the server's exit
    and its log."""
    import types

    from generator.measure import tune as tune_mod
    from generator.serve.server import TritonServer
    from generator.spec import load_spec

    def died_at_once(self):  # a server that answered its start, then died (exit -9) before the first round
        self.process = types.SimpleNamespace(poll=lambda: -9)
        self.http_port = self.grpc_port = self.metrics_port = 9  # nothing listens there
        return self

    monkeypatch.setattr(TritonServer, "__enter__", died_at_once)
    monkeypatch.setattr(TritonServer, "__exit__", lambda self, *exc: None)
    monkeypatch.setattr(tune_mod, "prepare_point", lambda spec, o, label, out, gpu, progress: (spec, tmp_path))
    spec = load_spec(None, ["loadtest.slo=ttft_p95<1s"])
    out = tmp_path / "settings" / "0"
    result = tune_mod.tune_setting(spec, [], "spec", out, gpu_visible=False, open_loop=False, budget=Budget(None),
                                   done=[], progress=lambda _m: None)
    assert result.status is SettingStatus.FAILED, result.reason
    assert "the server exited (code -9) during the search" in result.reason and "--url" not in result.reason


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_model_config_that_is_no_regular_file_refuses_the_setting_naming_it(tmp_path, monkeypatch, kind):
    """review30: tune's prediction read the served model's config.json with read_text: a FIFO there (tar keeps them)
    held `tritongen tune` forever before any server started, a link to /dev/zero read until a MemoryError."""
    import os

    from generator.measure import tune as tune_mod
    from generator.spec import load_spec

    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json") if kind == "fifo" else (model / "config.json").mkdir()

    def never(*_a):
        raise AssertionError("the setting went on to render and serve")

    monkeypatch.setattr(tune_mod, "prepare_point", never)
    spec = load_spec(None, ["loadtest.slo=ttft_p95<1s", "serving.engine=cpu-reference", f"model.source={model}",
                            "quantization.format=none", "quantization.kv_cache=none"])
    result = tune_mod.tune_setting(spec, [], "spec", tmp_path / "settings" / "0", gpu_visible=False, open_loop=False,
                                   budget=Budget(None), done=[], progress=lambda _m: None)
    assert result.status is SettingStatus.REFUSED and f"{model / 'config.json'}: not a regular file" in result.reason


@pytest.mark.parametrize("limited", [False, True], ids=["served", "client-limited"])
def test_a_setting_whose_round_measured_no_request_failed_naming_the_round_time(tmp_path, monkeypatch, limited):
    """review28: a round whose time (tune.level_timeout_s) ran out before any request but the warm-up ones was
    answered (a setting slower than a round lasts; a low rate) measured no request: the level's attainment of no
    request was a ValueError that ended `tritongen tune` with a traceback, its output (every setting measured) deleted.
    Now the setting failed, naming the round's time and what to change."""
    import types

    from generator.measure import tune as tune_mod
    from generator.serve.server import TritonServer
    from generator.spec import load_spec

    monkeypatch.setattr(TritonServer, "__enter__", lambda self: types.SimpleNamespace())
    monkeypatch.setattr(TritonServer, "__exit__", lambda self, *exc: None)
    monkeypatch.setattr(tune_mod, "prepare_point", lambda spec, o, label, out, gpu, progress: (spec, tmp_path))
    monkeypatch.setattr(tune_mod, "round_measure", lambda *a: lambda load, rnd: RoundSample(rows=[], client_limited=limited))
    spec = load_spec(None, ["loadtest.slo=ttft_p95<1s", "tune.level_timeout_s=3"])
    result = tune_mod.tune_setting(spec, [], "spec", tmp_path / "settings" / "0", gpu_visible=False, open_loop=False,
                                   budget=Budget(None), done=[], progress=lambda _m: None)
    assert result.status is SettingStatus.FAILED, result.reason
    assert "measured no request" in result.reason and "tune.level_timeout_s = 3 s" in result.reason


def test_predicted_kv_full_concurrency_comes_from_the_engines_own_sizing(qwen3_8b_config):
    import json

    from generator.engine.gpus import lookup_gpu
    from generator.engine.memory import memory_plan
    from generator.engine.shape import model_shape
    from generator.measure.predict import predict
    from generator.spec import load_spec

    config = json.loads(qwen3_8b_config.read_text())
    cpu = load_spec(None, ["serving.engine=cpu-reference", "build.max_batch_size=16", "build.tokens_per_block=16",
                           "serving.cpu_kv_cache_mib=64"])
    p = predict(cpu, False, config, 32, 24)
    block = 2 * 36 * 8 * 128 * 4 * 16  # K and V, 36 layers, 8 KV heads of 128, float32, 16 tokens
    assert p.kv_requests == int(0.9 * 64 * 2**20 // block) // 4 == 3  # 64 tokens a request: 4 blocks
    assert (p.batch_slots, p.concurrency) == (16, 3) and "KV blocks" in p.source
    gpu = load_spec(None, [])
    plan = memory_plan(gpu, model_shape(config), lookup_gpu(gpu.build.gpu))
    g = predict(gpu, True, config, 128, 64)
    assert g.kv_requests == plan.kv_tokens // 192 and g.concurrency == min(g.batch_slots, g.kv_requests)


@pytest.mark.parametrize("hostile", [{"num_attention_heads": 0}, {"head_dim": "x", "num_hidden_layers": 4_000_000_000}])
def test_a_hostile_checkpoint_config_is_no_prediction_naming_its_key(qwen3_8b_config, hostile):
    """review30: the CPU engine's prediction read the served checkpoint's config.json unchecked: num_attention_heads
    0 ended tune in a ZeroDivisionError traceback, head_dim "x" with 4e9 layers repeated a string of some 64 GB."""
    import json

    from generator.measure.predict import predict
    from generator.spec import load_spec

    config = json.loads(qwen3_8b_config.read_text()) | hostile
    p = predict(load_spec(None, ["serving.engine=cpu-reference"]), False, config, 32, 24)
    assert p.kv_requests is None and f"has {next(reversed(hostile))} = " in p.source
