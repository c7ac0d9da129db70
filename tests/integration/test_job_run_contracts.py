"""Contracts of running jobs: cancels that arrive while a job is being validated, what a job's record
says afterwards, the mismatch correction's weights, and how the job's parts are set up."""

from __future__ import annotations

import pytest

from openrft import config as C
from openrft.errors import JobError
from openrft.jobs import runner
from openrft.jobs.states import JobState
from openrft.jobs.store import JobStore


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    return JobStore(tmp_path / "home")


def test_a_cancel_that_arrives_during_validation_ends_the_job_cancelled_before_training(store, monkeypatch):
    """`rftj cancel` while the job is VALIDATING (loading its evaluator and datasets): the job must end
    CANCELLED without loading the model or training, not go on to train."""
    cfg = C.build_config({}, {"job_id": "v"})[0]
    store.create("v", cfg)

    def validate_then_cancel(cfg, job_dir=None):
        store.request_cancel("v")  # the cancel lands while the inputs are being checked
        return object()  # a prepared job that must never be trained

    def never_trains(*args, **kwargs):
        raise AssertionError("a job cancelled during validation was trained")

    monkeypatch.setattr(runner, "validate", validate_then_cancel)
    monkeypatch.setattr("openrft.train.job.run_training", never_trains)
    final = runner.run_job(store, "v", quiet=True)
    assert final.state is JobState.CANCELLED
    assert final.message == "cancelled before training started"


def test_a_job_cancelled_before_validation_is_not_validated(store, monkeypatch):
    cfg = C.build_config({}, {"job_id": "w"})[0]
    store.create("w", cfg)
    stop = [True]  # e.g. Ctrl-C before the job got going

    def must_not_validate(cfg, job_dir=None):
        raise JobError("validated although the job was already stopped")

    monkeypatch.setattr(runner, "validate", must_not_validate)
    final = runner.run_job(store, "w", quiet=True, local_stop=stop)
    assert final.state is JobState.CANCELLED and final.message == "cancelled before training started"


def test_resume_from_a_folder_outside_the_store_keeps_the_given_job_id_and_says_it_starts_over(
    store, tmp_path, monkeypatch, capsys
):
    """`create --resume-from FOLDER --job-id ID` for a folder the store does not know records the job
    under ID (not the folder's name); with no checkpoint written yet it says the job starts over."""
    folder = tmp_path / "copied-run"
    (folder / "checkpoints").mkdir(parents=True)
    ran = []

    def fake_run(store, job_id, **options):
        ran.append(job_id)
        return store.transition(job_id, JobState.CANCELLED, "stopped by the test")

    monkeypatch.setattr(runner, "run_job", fake_run)
    cfg = C.build_config({}, {"job_id": "given-id"})[0]
    code = runner.create_and_run(cfg, quiet=True, resume_from=str(folder))
    assert code == runner.EXIT_CANCELLED  # a cancelled job is not a success
    assert ran == ["given-id"] and store.exists("given-id") and not store.exists("copied-run")
    assert store.get("given-id", check_process=False).job_dir == folder.resolve()
    err = capsys.readouterr().err
    assert "job given-id: no checkpoint yet, so it starts from the beginning" in err


HEADER_EVALUATOR = (
    "from openrft.evaluators import evaluation_test\n\n"
    "@evaluation_test(max_concurrent_rollouts=3, max_concurrent_evaluations=5)\n"
    "def score(completion, ground_truth=None, **row):\n    return 1.0\n"
)


def test_concurrency_flags_win_over_the_evaluator_header_in_the_settings_the_job_runs_with(
    store, tmp_path, tiny_model_dir
):
    (tmp_path / "header.py").write_text(HEADER_EVALUATOR)
    (tmp_path / "good.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": 4}\n'
        '{"messages": [{"role": "user", "content": "3+3?"}], "ground_truth": 6}\n'
    )
    given = {"base_model": str(tiny_model_dir), "dataset": str(tmp_path / "good.jsonl"),
             "evaluator": f"{tmp_path}/header.py::score"}  # fmt: skip
    engine = runner.validate(C.build_config({}, given)[0]).settings.engine
    assert (engine.max_concurrent_rollouts, engine.max_concurrent_evaluations) == (3, 5)  # the header's
    flags = {**given, "max_concurrent_rollouts": 7, "max_concurrent_evaluations": 2}
    engine = runner.validate(C.build_config({}, flags)[0]).settings.engine
    assert (engine.max_concurrent_rollouts, engine.max_concurrent_evaluations) == (7, 2)  # the flags'


def test_a_failure_reason_too_long_for_the_reserved_room_is_cut_to_fit_it(tmp_path):
    """On a full disk the reason is written over the room reserved at the start: it must never grow the file."""
    from openrft.jobs.outcome import OUTCOME_FILE, OUTCOME_ROOM, read_outcome, record_outcome, reserve_outcome

    reserve_outcome(tmp_path)
    record_outcome(tmp_path, "x" * (3 * OUTCOME_ROOM))
    assert (tmp_path / OUTCOME_FILE).stat().st_size == OUTCOME_ROOM
    assert read_outcome(tmp_path) == "x" * (OUTCOME_ROOM - 1)


def test_a_detached_worker_exits_with_the_code_of_the_error_that_failed_its_job(store, monkeypatch, capsys):
    import signal

    from openrft.errors import ConfigError
    from openrft.jobs import worker

    def refused(*args, **kwargs):
        raise ConfigError("--dataset: gone", hint="give it again")

    monkeypatch.setattr(runner, "run_job", refused)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert worker.main(["j1"]) == ConfigError.exit_code == 2
    finally:
        signal.signal(signal.SIGTERM, previous)  # the worker installs its own handler
    err = capsys.readouterr().err
    assert "job j1 FAILED: --dataset: gone" in err and "hint: give it again" in err
    assert worker.main([]) == 2 and "usage: python -m openrft.jobs.worker JOB_ID" in capsys.readouterr().err


def _two_sequences():
    from openrft.records import Completion
    from openrft.train.batching import TrainSequence

    def completion(i, logprobs):
        ids = tuple(range(5, 5 + len(logprobs)))
        return Completion("p", i, (1, 2), ids, "x", tuple(logprobs), "stop")

    return [TrainSequence(completion(0, [-1.0, -2.0, -0.5]), 1.0, 0),
            TrainSequence(completion(1, [-0.25, -3.0]), -1.0, 0)]  # fmt: skip


def _recompute(offset, cap):
    """The trainer's log-probs are the sampler's + ``offset`` (r = e^offset for every token)."""
    import torch

    from openrft.train.mismatch import recompute_old_logprobs

    steps = [_two_sequences()]
    return recompute_old_logprobs(
        torch.nn.Linear(1, 1), steps, lambda model, batch: batch.sampler_logprobs_RC.float() + offset,
        lambda sequences: [list(range(len(sequences)))], pad_token_id=0, cap=cap,
    )  # fmt: skip


def test_rollout_is_cap_zero_leaves_out_the_weights_and_measures_the_uncapped_ratio():
    """--rollout-is-cap 0: no importance weights at all (not weights capped at 0, which would zero every
    token's objective), and mismatch/is_weight_mean is the plain ratio, nothing counted as truncated."""
    import math

    done, metrics = _recompute(0.5, cap=0.0)
    assert all(s.is_weights is None for s in done[0])
    assert [len(s.old_logprobs) for s in done[0]] == [3, 2]
    assert done[0][1].old_logprobs == pytest.approx((0.25, -2.5))
    assert metrics["mismatch/is_weight_mean"] == pytest.approx(math.exp(0.5), rel=1e-5)
    assert metrics["mismatch/is_truncated_frac"] == 0.0
    done, metrics = _recompute(0.5, cap=1.0)
    assert [s.is_weights for s in done[0]] == [(1.0, 1.0, 1.0), (1.0, 1.0)]
    assert metrics["mismatch/is_truncated_frac"] == 1.0


def test_a_ratio_exactly_at_the_cap_is_not_counted_as_truncated():
    done, metrics = _recompute(0.0, cap=1.0)  # sampler and trainer agree: r = 1 = the cap
    assert metrics["mismatch/is_truncated_frac"] == 0.0 and metrics["mismatch/is_weight_mean"] == 1.0
    assert [s.is_weights for s in done[0]] == [(1.0, 1.0, 1.0), (1.0, 1.0)]


def test_recomputing_old_log_probs_leaves_the_model_in_the_mode_it_found_it():
    import torch

    from openrft.train.mismatch import recompute_old_logprobs

    seen = []
    for training in (True, False):
        model = torch.nn.Linear(1, 1).train(training)

        def logprobs(m, batch):
            seen.append(m.training)  # the recomputation itself runs in eval mode
            return batch.sampler_logprobs_RC.float()

        recompute_old_logprobs(
            model, [_two_sequences()], logprobs, lambda s: [[0, 1]], pad_token_id=0, cap=2.0
        )
        assert model.training is training
    assert seen == [False, False]


@pytest.mark.parametrize("written", ["ev.py::score", "ev.py", "./ev.py::score"])
def test_an_evaluator_file_given_relative_is_remembered_by_its_absolute_path(tmp_path, monkeypatch, written):
    """Evaluator worker processes and resumed jobs load the evaluator again from its spec, from wherever
    they run: a relative file spec is remembered absolute."""
    from openrft.evaluators import load_evaluator

    (tmp_path / "ev.py").write_text("def score(completion, **row):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    name = "::score" if "::" in written else ""
    assert load_evaluator(written).spec == f"{tmp_path / 'ev.py'}{name}"


def test_the_endpoint_engine_samples_as_many_sequences_at_once_as_the_flag_says(tokenizer):
    from openrft.settings import EngineSettings
    from openrft.train.setup import make_engine

    def engine(concurrency):
        settings = EngineSettings("endpoint", "http://127.0.0.1:9/v1", concurrency, None, 60.0, None)
        return make_engine(settings, None, tokenizer, "policy")[0]

    assert engine(5).max_concurrent_rollouts == 5  # --max-concurrent-rollouts (or the evaluator header's)
    assert engine(None).max_concurrent_rollouts == 32  # unset: the engine's own default


def test_only_a_float32_local_engine_sampling_the_trainer_itself_skips_the_mismatch_correction():
    """In bfloat16 the local engine's log-probs differ from the trainer's pass: they must be recomputed."""
    import torch

    from openrft.rollout.local import LocalEngine
    from openrft.train.setup import samples_this_model

    def local(model):
        engine = LocalEngine.__new__(LocalEngine)  # only its model matters here
        engine.model = model
        return engine

    fp32 = torch.nn.Sequential(torch.nn.Linear(2, 2))
    bf16 = torch.nn.Sequential(torch.nn.Linear(2, 2)).to(torch.bfloat16)
    assert samples_this_model(local(fp32), fp32)
    assert not samples_this_model(local(bf16), bf16)
    assert not samples_this_model(local(torch.nn.Sequential(torch.nn.Linear(2, 2))), fp32)  # a copy


def test_a_failed_agent_run_is_scored_invalid_whatever_the_evaluator_says_of_its_text():
    """An agent run that raised or timed out is never trained on: its score is invalid, with the error as
    the reason, even when its (partial) text would score well."""
    from openrft.evaluators import load_evaluator
    from openrft.records import Completion, Prompt
    from openrft.settings import EngineSettings
    from openrft.train.setup import make_scorer

    evaluator = load_evaluator("arithmetic")
    assert evaluator.run_inline  # scored in this process
    prompt = Prompt("p", ({"role": "user", "content": "2+2?"},), row={"ground_truth": 4})

    def completion(i, error=""):
        return Completion("p", i, (1,), (2,), "<answer>4</answer>", (-0.1,), "stop", error=error)

    score = make_scorer(EngineSettings("local", None, None, None, 60.0, None), evaluator, check_invalid=False)
    ((ok, failed),) = score([prompt], [[completion(0), completion(1, error="agent timed out after 600 s")]])
    assert ok.is_valid and ok.score > 0
    assert not failed.is_valid and failed.score == 0.0 and failed.reason == "agent timed out after 600 s"


def test_a_round_whose_agent_runs_mostly_failed_is_blamed_on_the_agent_not_the_evaluator():
    from openrft.errors import EvaluatorError
    from openrft.evaluators import load_evaluator
    from openrft.records import Completion, Prompt
    from openrft.settings import EngineSettings
    from openrft.train.setup import make_scorer

    prompt = Prompt("p", ({"role": "user", "content": "2+2?"},), row={"ground_truth": 4})
    runs = [
        Completion("p", i, (1,), (2,), "", (-0.1,), "stop", error="ConnectionError: refused")
        for i in range(4)
    ]
    score = make_scorer(EngineSettings("local", None, None, None, 60.0, None), load_evaluator("arithmetic"))
    with pytest.raises(
        EvaluatorError, match="4 of 4 agent runs failed, so more than half the candidates are invalid"
    ):
        score([prompt], [runs])


def test_a_fresh_adapter_scales_by_twice_its_rank_unless_lora_alpha_says_otherwise(tokenizer):
    """--lora-alpha's documented default is 2 x rank."""
    from openrft.testing import tiny_model
    from openrft.train.policy import attach_lora

    assert (
        attach_lora(tiny_model(seed=0, tokenizer=tokenizer)[0], rank=4).peft_config["default"].lora_alpha == 8
    )
    assert (
        attach_lora(tiny_model(seed=0, tokenizer=tokenizer)[0], rank=4, alpha=3)
        .peft_config["default"]
        .lora_alpha
        == 3
    )


@pytest.mark.parametrize("flag", [[], ["--deterministic"]])
def test_deterministic_mode_is_set_before_the_model_is_built_only_when_asked(
    tiny_model_dir, tmp_path, monkeypatch, flag
):
    from openrft.cli import main
    from openrft.train import setup

    monkeypatch.setenv("OPENRFT_HOME", str(tmp_path / "home"))
    calls = []
    monkeypatch.setattr(setup, "make_deterministic", lambda: calls.append("deterministic"))

    def stop_here(*args, **kwargs):  # what comes before the model is all this test needs
        calls.append("build_policy")
        raise RuntimeError("stopped before the model")

    monkeypatch.setattr(setup, "build_policy", stop_here)
    main(["rftj", "create", "--base-model", str(tiny_model_dir), "--dataset", "arithmetic:count=4", "--n", "2",
          "--max-output-tokens", "16", "--chunk-size", "2", "--quiet", "--output-model", str(tmp_path / "out"),
          *flag])  # fmt: skip
    assert calls == (["deterministic", "build_policy"] if flag else ["build_policy"])
