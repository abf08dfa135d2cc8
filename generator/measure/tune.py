"""``tritongen tune``: which serving settings, for which load, under an SLO.

For every setting of the ``--set`` grid: render and validate it (a refusal by the spec, the plan or the
validator is reported with its reason and costs no load), start its server (a server that does not load
is a refusal too), then search its goodput (goodput.py) with short load-test rounds against that server.
A setting that a measured one shows cannot do better is skipped with the reason; the budget stops new
measurements and the result says what it left. Then: the Pareto front, the winner and runner-up (measured
again with ``tune.repeat``), the winner as a spec (DIR/best.yaml) and a rendered, validated repository
(DIR/best-repo/), and the report (report_tune.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from generator.errors import ArtifactCorrupt, LoadTestError, ServerNotReady, TritongenError
from generator.measure.attainment import objectives, request_rows
from generator.measure.goodput import Level, LevelVerdict, RoundSample, SearchOutcome, measure_level, search
from generator.measure.intervals import Interval, across_runs
from generator.measure.predict import Prediction, predict
from generator.measure.results import PointStatus
from generator.measure.slo import parse_slo
from generator.measure.sweep import SweepPlan, failure_status, prepare_point
from generator.measure.tune_results import (
    Choice, Goodput, RepeatResult, SettingResult, SettingStatus, TuneResult,
)
from generator.spec import Spec, with_overrides

BATCH_FIELD = "serving.max_batch_size"


class Budget:
    """``tune.budget_min`` against a clock: no new round starts once it is spent."""

    def __init__(self, minutes: Optional[float], clock: Callable[[], float] = time.monotonic) -> None:
        self.minutes, self.clock, self.started = minutes, clock, clock()

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def ok(self) -> bool:
        return self.minutes is None or self.elapsed_s() < self.minutes * 60


def setting_gpus(spec: Spec, gpu_visible: bool) -> int:
    """GPUs one server of the setting uses; the CPU reference engine counts as one."""
    if not gpu_visible:
        return 1
    return spec.build.tp_size * spec.build.pp_size * spec.topology.instances_per_node


def _values(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def skip_reason(overrides: list[str], prediction: Optional[Prediction], done: list[SettingResult]) -> Optional[str]:
    """Why a measured setting shows this one cannot do better, or None.

    Closed loop, the only rule that holds exactly: this setting differs from a measured one only by more
    batch slots, the measured one broke at a concurrency within its own slots (so its slot limit never
    bound), and the planner gives both the same KV cache (on the CPU engine the cache, and with it the
    work per step, grows with the slots): below that load both serve every request the same way, so the
    extra slots can only tie.
    """
    mine = _values(overrides)
    for other in done:
        s = other.search
        if other.status is not SettingStatus.MEASURED or s is None or s.breaking_load is None:
            continue
        theirs = _values(other.overrides)
        differ = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        if differ != {BATCH_FIELD}:
            continue
        try:
            slots, their_slots = int(mine[BATCH_FIELD]), int(theirs[BATCH_FIELD])
        except (KeyError, ValueError):
            continue
        same_kv = (prediction is not None and other.prediction is not None
                   and prediction.kv_requests == other.prediction.kv_requests)
        if slots > their_slots and s.breaking_load <= their_slots and same_kv:
            return (f"cannot beat {other.label}: it broke at {s.breaking_load:g} users, within its {their_slots} batch "
                    f"slots, with the same KV cache; the extra slots are never used below that load")
    return None


def _round_overrides(spec: Spec, load: float, rnd: int, open_loop: bool) -> list[str]:
    """One round's load-test settings: a request count (at least three per user in closed loop, so the
    level's tail, when fewer users remain busy, stays short), no SLO gate (tune judges), no re-asking, and
    no request waited for longer than the round may last (it counts as an error, a miss)."""
    t, lt = spec.tune, spec.loadtest
    n = t.requests_per_level if open_loop else max(t.requests_per_level, 3 * int(load))
    timeout = min(lt.request_timeout_s, t.level_timeout_s)
    sets = [f"loadtest.max_requests={n}", f"loadtest.duration_s={t.level_timeout_s}", "loadtest.reference_checks=0",
            f"loadtest.request_timeout_s={timeout:g}",
            "loadtest.slo=null", f"loadtest.warmup_requests={lt.warmup_requests if rnd == 0 else 0}",
            f"loadtest.seed={lt.seed + rnd}"]
    if open_loop:
        return sets + [f"loadtest.request_rate={load:g}"]
    return sets + [f"loadtest.users={int(load)}", f"loadtest.spawn_rate={max(load, 1.0):g}", "loadtest.request_rate=null"]


def round_measure(spec: Spec, server, out_dir: Path, open_loop: bool,
                  progress: Callable[[str], None]) -> Callable[[float, int], RoundSample]:
    """The measurement function of goodput.search: one load-test round against the running ``server``."""
    from generator.measure.runner import run_loadtest

    objs = objectives(parse_slo(spec.loadtest.slo or ""))
    unit = "requests/s" if open_loop else "users"

    def measure(load: float, rnd: int) -> RoundSample:
        progress(f"load {load:g} {unit}, round {rnd + 1}")
        code = server.exit_code
        if code is not None:  # review26: it died in the round before (out of memory, say); the next round's "no server
            # answers at URL" (a ServerError) made the setting "refused" (no load sent) with "pass the right --url"
            raise LoadTestError(f"the server exited (code {code}) during the search, before load {load:g} {unit}",
                                where=str(server.log_file), fix="its log's last lines say why (out of memory?); mend "
                                "that or leave the setting out, then tune again")
        folder = out_dir / f"{load:g}-{rnd}"
        folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        result = run_loadtest(with_overrides(spec, _round_overrides(spec, load, rnd, open_loop)), folder,
                              url=f"http://{server.http_url}", grpc_url=server.grpc_url, metrics_url=server.metrics_url,
                              admin_key=server.admin_key, title=f"tune level {load:g} {unit}, round {rnd + 1}",
                              report=False)
        limits = result.results.load_limits
        return RoundSample(rows=request_rows(result.requests, objs), client_limited=bool(limits),
                           client_reasons=tuple(limits), seconds=time.monotonic() - started,
                           dir=str(folder.relative_to(out_dir.parent)))  # the run's folder is renamed at the end

    return measure


def goodput_of(outcome: SearchOutcome, gpus: int) -> Optional[Goodput]:
    level = outcome.level(outcome.goodput_load)
    if level is None:
        return None
    f = level.figures

    def per_gpu(i: Interval) -> Interval:
        return i.model_copy(update={"estimate": i.estimate / gpus, "low": i.low / gpus, "high": i.high / gpus})

    return Goodput(load=level.load, requests=f.requests, requests_per_s_per_gpu=per_gpu(f.requests_per_s),
                   output_tokens_per_s_per_gpu=per_gpu(f.output_tokens_per_s), attainment=f.attainment,
                   ttft_p95_ms=f.ttft_p95_ms, itl_p95_ms=f.itl_p95_ms)


def pareto_front(settings: list[SettingResult]) -> list[str]:
    """Settings no other beats on both goodput per GPU (higher) and TTFT p95 at its goodput (lower)."""
    pts = [(s.label, s.goodput.output_tokens_per_s_per_gpu.estimate, s.goodput.ttft_p95_ms.estimate)
           for s in settings if s.goodput is not None and s.goodput.ttft_p95_ms is not None]
    return [a for a, ta, la in pts
            if not any((tb >= ta and lb <= la) and (tb > ta or lb < la) for b, tb, lb in pts if b != a)]


def ranked(settings: list[SettingResult]) -> list[SettingResult]:
    """Measured settings with a goodput, highest output tokens/s per GPU first."""
    return sorted((s for s in settings if s.goodput is not None),
                  key=lambda s: s.goodput.output_tokens_per_s_per_gpu.estimate, reverse=True)


def _choice(s: SettingResult, unit: str, other: Optional[SettingResult]) -> Choice:
    g = s.goodput
    tps = g.output_tokens_per_s_per_gpu
    reason = (f"goodput {tps.estimate:.1f} output tokens/s per GPU ({tps.confidence:.0%} interval {tps.low:.1f}–"
              f"{tps.high:.1f} over the {tps.n} requests of its steady window; {g.requests} measured) at {g.load:g} {unit}")
    if other is not None and other.goodput is not None:
        o = other.goodput.output_tokens_per_s_per_gpu
        reason += ("; surely ahead of " if tps.low > o.high else "; its interval overlaps that of ") + other.label
    return Choice(label=s.label, overrides=s.overrides, reason=reason)


def _model_config(spec: Spec) -> dict:
    """The served model's config.json ({} where there is none); one that is no bounded regular file of a JSON object
    refuses the setting, naming it (review30: a FIFO held tune forever, a link to /dev/zero ended in a MemoryError)."""
    from generator.fsutil import read_json_object

    path = spec.serving_weights_dir / "config.json"
    if not path.exists() and not path.is_symlink():
        return {}
    fix = "replace it with the model's own config.json"
    try:
        return read_json_object(path, fix=fix)
    except ArtifactCorrupt as exc:  # the setting's reason keeps the message only: name the file in it
        raise ArtifactCorrupt(f"{path}: {exc.message}", where=str(path), fix=fix) from None


def tune_setting(spec: Spec, overrides: list[str], label: str, out: Path, *, gpu_visible: bool, open_loop: bool,
                 budget: Budget, done: list[SettingResult], progress: Callable[[str], None]) -> SettingResult:
    """One setting: refused, skipped, or searched on its own server."""
    from generator.serve.server import TritonServer

    started = time.monotonic()
    result = SettingResult(label=label, overrides=overrides, dir=f"{out.parent.name}/{out.name}", gpus=1,
                           status=SettingStatus.MEASURED)
    try:
        pspec = with_overrides(spec, overrides)
        lt = pspec.loadtest
        result.gpus = setting_gpus(pspec, gpu_visible)
        result.prediction = predict(pspec, gpu_visible, _model_config(pspec), lt.input_tokens_mean, lt.output_tokens_mean)
        if not open_loop and (why := skip_reason(overrides, result.prediction, done)):
            return result.model_copy(update={"status": SettingStatus.SKIPPED, "reason": why})
        pspec, repo = prepare_point(spec, overrides, label, out, gpu_visible, progress)
        progress(f"{label}: starting the server")
        with TritonServer(repo, log_file=out / "triton.log") as server:
            outcome = search(round_measure(pspec, server, out / "levels", open_loop, lambda m: progress(f"{label}: {m}")),
                             pspec.tune, open_loop=open_loop, time_left=budget.ok)
    except TritongenError as exc:
        status, detail = failure_status(exc)
        failed = status is PointStatus.LOAD or isinstance(exc, ServerNotReady)  # slow to start is no refusal
        return result.model_copy(update={"status": SettingStatus.FAILED if failed else SettingStatus.REFUSED,
                                         "reason": f"{status.value}: {detail}",
                                         "seconds": time.monotonic() - started})
    if not outcome.levels:
        return result.model_copy(update={"status": SettingStatus.UNMEASURED, "reason": outcome.note})
    return result.model_copy(update={"search": outcome, "goodput": goodput_of(outcome, result.gpus),
                                     "seconds": time.monotonic() - started})


def repeat_level(spec: Spec, s: SettingResult, out: Path, *, gpu_visible: bool, open_loop: bool, budget: Budget,
                 progress: Callable[[str], None]) -> RepeatResult:
    """The setting's goodput level again, ``tune.repeat`` times, each on a fresh server."""
    from generator.serve.server import TritonServer

    first = s.search.level(s.goodput.load)
    runs: list[Level] = []
    failed: list[str] = []
    for i in range(spec.tune.repeat):
        if not budget.ok():
            break
        try:
            pspec, repo = prepare_point(spec, s.overrides, s.label, out / str(i), gpu_visible, progress)
            with TritonServer(repo, log_file=out / str(i) / "triton.log") as server:
                level = measure_level(round_measure(pspec, server, out / str(i) / "levels", open_loop,
                                                    lambda m: progress(f"{s.label} repeat {i + 1}: {m}")),
                                      s.goodput.load, pspec.tune, budget.ok)
        except TritongenError as exc:  # review25: one repeat's slow server or failed load test ended the whole tune,
            # its output (every setting measured) deleted and the error naming a log inside it; its logs stay in out/i
            status, detail = failure_status(exc)
            failed.append(f"repeat {i + 1} (repeats/{out.name}/{i}): {status.value}: {detail}")
            progress(f"{s.label} repeat {i + 1} failed: {detail}")
            continue
        if level is not None:
            runs.append(level)
    values = [lv.figures.output_tokens_per_s.estimate / s.gpus for lv in [first] + runs]
    return RepeatResult(label=s.label, load=s.goodput.load, runs=runs, output_tokens_per_s_per_gpu=across_runs(values),
                        passed=sum(lv.verdict is LevelVerdict.PASS for lv in runs), failed=failed)


def order_note(win: RepeatResult, second: RepeatResult) -> str:
    """Whether the winner stayed ahead of the runner-up over the runs of both (the search's and the repeats)."""
    failed = len(win.failed) + len(second.failed)
    note = _order(win, second)
    return note + (f"; {failed} repeat(s) failed and measured nothing (tune.json says why)" if failed else "")


def _order(win: RepeatResult, second: RepeatResult) -> str:
    a, b = win.output_tokens_per_s_per_gpu, second.output_tokens_per_s_per_gpu
    runs = min(a.n, b.n)
    if runs < 2:
        return "not repeated (the budget ran out)" if not win.failed + second.failed else "not repeated"
    if a.low > b.high:
        return f"holds: over {runs} runs each, {win.label}'s interval lies above {second.label}'s"
    if a.estimate > b.estimate:
        return f"holds on the mean over {runs} runs each, but the intervals overlap: not surely better"
    return f"does not hold: over {runs} runs each {second.label} averaged higher"


def write_best(spec: Spec, best: Choice, out_dir: Path, gpu_visible: bool) -> list[str]:
    """DIR/best.yaml (the winner as a spec, paths absolute) and DIR/best-repo/ rendered and validated;
    returns the validator's error messages (none expected: the setting validated before it was served)."""
    import yaml

    from generator.repo.problems import failing
    from generator.repo.render import render_repository
    from generator.repo.validate import validate_repository

    bspec = with_overrides(spec, best.overrides)
    data = bspec.to_yaml_dict()
    data["artifacts"].update(dir=str(bspec.path(bspec.artifacts.dir)), model_dir=str(bspec.model_dir),
                             checkpoint_dir=str(bspec.checkpoint_dir), engine_dir=str(bspec.engine_dir))
    for name in ("prompts", "tokenizer"):
        if getattr(bspec.loadtest, name) is not None:
            data["loadtest"][name] = str(bspec.path(getattr(bspec.loadtest, name)))
    (out_dir / "best.yaml").write_text(f"# tritongen tune's winner: {best.label}\n# {best.reason}\n"
                                       + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    repo = render_repository(bspec, out_dir / "best-repo", force=True, gpu_visible=gpu_visible)
    return [p.message for p in failing(validate_repository(repo, bspec))]


def run_tune(spec: Spec, plan: SweepPlan, out_dir: Path, *, gpu_visible: bool = False,
             progress: Callable[[str], None] = lambda _msg: None) -> TuneResult:
    """Every setting into OUT/settings/<n>/, then repeats, best.yaml, best-repo/ and the report."""
    from generator.measure.report_tune import write_tune_report

    t = spec.tune
    open_loop = t.start_rate is not None
    mode, unit = ("open loop", "requests/s") if open_loop else ("closed loop", "users")
    objectives(parse_slo(spec.loadtest.slo or ""))  # refuse an SLO tune cannot judge before any server starts
    budget = Budget(t.budget_min)
    settings: list[SettingResult] = []
    for i, overrides in enumerate(plan.points):
        label = plan.label(overrides)
        if not budget.ok():
            settings.append(SettingResult(label=label, overrides=overrides, dir="", gpus=1,
                                          status=SettingStatus.UNMEASURED, reason="the budget ran out first"))
            continue
        progress(f"setting {i + 1}/{len(plan.points)}: {label}")
        settings.append(tune_setting(spec, overrides, label, out_dir / "settings" / str(i), gpu_visible=gpu_visible,
                                     open_loop=open_loop, budget=budget, done=settings, progress=progress))
    order = ranked(settings)
    best = _choice(order[0], unit, order[1] if len(order) > 1 else None) if order else None
    runner_up = _choice(order[1], unit, None) if len(order) > 1 else None
    repeats, note = [], ""
    if t.repeat and len(order) > 1:
        repeats = [repeat_level(spec, s, out_dir / "repeats" / str(k), gpu_visible=gpu_visible, open_loop=open_loop,
                                budget=budget, progress=progress) for k, s in enumerate(order[:2])]
        note = order_note(*repeats)
    unmeasured = [s.label for s in settings if s.status is SettingStatus.UNMEASURED]
    unresolved = [s.label for s in settings if s.search is not None and not s.search.resolved]
    left = "; ".join(part for part in (
        f"not measured: {', '.join(unmeasured)}" if unmeasured else "",
        f"search not narrowed to one step: {', '.join(unresolved)}" if unresolved else "") if part)
    result = TuneResult(slo=spec.loadtest.slo or "", attainment=t.attainment, mode=mode, settings=settings,
                        front=pareto_front(settings), best=best, runner_up=runner_up, repeats=repeats, order=note,
                        budget_min=t.budget_min, elapsed_s=budget.elapsed_s(), left=left)
    problems = write_best(spec, best, out_dir, gpu_visible) if best else []
    write_tune_report(out_dir, result, problems)
    return result
