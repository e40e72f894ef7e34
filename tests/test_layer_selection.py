"""distill/layer_selection.py: layers chosen by measurement (issue 12). Tiny teachers with a planted useless
block (zeroed output projections: the block's output equals its input) -- scan and angular both drop it --
and every recorded score checked against a direct computation: a student built with
``student_from_teacher_layers`` and its loss, or hidden states taken with plain forward hooks.

The calibration ids are sampled from the teacher itself, so that every real block matters by a margin:
the expected loss of any changed model on the teacher's own samples exceeds the teacher's by their KL
divergence (Gibbs' inequality), while dropping the planted block changes nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from distill import select_teacher_layers
from distill.config import DistillationConfig
from distill.layer_selection import calibration_ids_from_blocks, measure_layer_selection
from distill.student import decoder_layers, student_from_teacher_layers
from distill.trainer import write_resolved_config
from tests.assets import tiny_gpt2, tiny_llama
from tests.test_student import tiny_qwen2

VOCAB = 64
PLANTED = 2


def _output_projections(block) -> list[torch.nn.Module]:
    if hasattr(block, "mlp") and hasattr(block.mlp, "c_proj"):  # GPT-2
        return [block.attn.c_proj, block.mlp.c_proj]
    return [block.self_attn.o_proj, block.mlp.down_proj]  # Llama, Qwen2


def _planted_teacher(kind: str, n_layers: int = 4):
    """A tiny teacher (weights of std 0.2, so every block changes the prediction) whose block PLANTED has
    zero output projections: it returns its input unchanged."""
    if kind == "gpt2":
        model = tiny_gpt2(
            vocab_size=VOCAB, n_layer=n_layers, initializer_range=0.2, bos_token_id=0, eos_token_id=0
        )
    elif kind == "llama":
        model = tiny_llama(vocab_size=VOCAB, num_hidden_layers=n_layers, initializer_range=0.2)
    else:
        model = tiny_qwen2(num_hidden_layers=n_layers)  # mixed full / sliding-window layer types
        model = type(model)(
            type(model.config)(**{**model.config.to_dict(), "vocab_size": VOCAB, "initializer_range": 0.2})
        )
    for projection in _output_projections(decoder_layers(model)[1][PLANTED]):
        for param in projection.parameters():
            param.data.zero_()
    return model.eval()


@torch.no_grad()
def _sample(model, rows: int = 8, length: int = 24, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, 1), generator=gen)
    for _ in range(length - 1):
        probs = model(input_ids=ids, use_cache=False).logits[:, -1].softmax(-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], dim=1)
    return ids


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2"])
def planted(request):
    """(teacher, calibration ids sampled from it)."""
    torch.manual_seed(0)
    teacher = _planted_teacher(request.param)
    return teacher, _sample(teacher)


@torch.no_grad()
def _loss(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()


@torch.no_grad()
def _block_states(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """The state entering every block and the one leaving the last, by plain forward hooks."""
    blocks = decoder_layers(model)[1]
    states: list = [None] * (len(blocks) + 1)
    hooks = []
    for i, block in enumerate(blocks):

        def hook(module, args, kwargs, output, i=i):
            states[i] = args[0] if args else kwargs["hidden_states"]
            states[i + 1] = output[0] if isinstance(output, tuple) else output

        hooks.append(block.register_forward_hook(hook, with_kwargs=True))
    model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return states


CALIBRATION = torch.randint(0, VOCAB, (6, 24), generator=torch.Generator().manual_seed(1000))


def test_the_planted_block_is_useless_and_the_others_are_not(planted):
    teacher, ids = planted
    full = _loss(teacher, ids)
    n = len(decoder_layers(teacher)[1])
    without = [
        _loss(student_from_teacher_layers(teacher, [j for j in range(n) if j != i]), ids) for i in range(n)
    ]
    assert without[PLANTED] == pytest.approx(full, abs=1e-6)
    assert all(loss > full + 0.05 for i, loss in enumerate(without) if i != PLANTED)


@pytest.mark.parametrize("method", ["scan", "angular"])
def test_scan_and_angular_drop_the_planted_block(planted, method):
    teacher, ids = planted
    kept = select_teacher_layers(teacher, 3, method=method, calibration_ids=ids)
    assert kept == [0, 1, 3]


def test_scan_scores_equal_the_loss_of_the_student_built_without_the_candidates(planted):
    teacher, ids = planted
    selection = measure_layer_selection(teacher, 2, method="scan", calibration_ids=ids, rows_per_pass=4)
    assert selection.teacher_loss == pytest.approx(_loss(teacher, ids), abs=1e-5)
    assert len(selection.steps) == 2 and selection.steps[0]["removed"] == [PLANTED]
    removed: list[int] = []
    for step in selection.steps:
        for candidate in step["candidates"]:
            kept = [i for i in range(4) if i not in removed + candidate["removed"]]
            assert candidate["score"] == pytest.approx(
                _loss(student_from_teacher_layers(teacher, kept), ids), abs=1e-5
            )
        best = min(step["candidates"], key=lambda c: c["score"])
        assert step["removed"] == best["removed"]
        removed += step["removed"]
    assert selection.kept == [i for i in range(4) if i not in removed] == sorted(selection.kept)
    assert selection.student_loss == pytest.approx(
        _loss(student_from_teacher_layers(teacher, selection.kept), ids), abs=1e-5
    )


def test_scan_removes_contiguous_runs_of_block_layers(planted):
    teacher, ids = planted
    selection = measure_layer_selection(teacher, 2, method="scan", calibration_ids=ids, block=2)
    (step,) = selection.steps
    assert [c["removed"] for c in step["candidates"]] == [[0, 1], [1, 2], [2, 3]]
    for candidate in step["candidates"]:
        kept = [i for i in range(4) if i not in candidate["removed"]]
        assert candidate["score"] == pytest.approx(
            _loss(student_from_teacher_layers(teacher, kept), ids), abs=1e-5
        )


def test_angular_scores_equal_a_direct_computation(planted):
    teacher, ids = planted
    selection = measure_layer_selection(teacher, 2, method="angular", calibration_ids=ids, rows_per_pass=4)
    states = _block_states(teacher, ids)
    (step,) = selection.steps
    assert [c["removed"] for c in step["candidates"]] == [[0, 1], [1, 2], [2, 3]]
    for start, candidate in enumerate(step["candidates"]):
        cosine = F.cosine_similarity(states[start], states[start + 2], dim=-1).clamp(-1, 1)
        expected = (torch.arccos(cosine) / math.pi).mean().item()
        assert candidate["score"] == pytest.approx(expected, abs=1e-5)
    assert selection.student_loss == pytest.approx(
        _loss(student_from_teacher_layers(teacher, selection.kept), ids), abs=1e-5
    )


def test_the_teacher_is_left_as_it_was(planted):
    teacher, ids = planted
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    logits = teacher(input_ids=ids).logits
    teacher.train()
    select_teacher_layers(teacher, 2, method="scan", calibration_ids=ids)
    assert teacher.training
    teacher.eval()
    assert teacher.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert torch.equal(teacher(input_ids=ids).logits, logits)
    assert len(decoder_layers(teacher)[1]) == 4


def test_even_is_distilgpt2s_map():
    assert select_teacher_layers(tiny_gpt2(n_layer=12), 6, method="even") == [0, 2, 4, 7, 9, 11]
    assert measure_layer_selection(tiny_gpt2(n_layer=12), 6, method="even").steps == []


def test_record_is_json_and_names_the_calibration():
    teacher = tiny_gpt2(vocab_size=VOCAB, n_layer=3)
    selection = measure_layer_selection(teacher, 2, method="scan", calibration_ids=CALIBRATION)
    record = json.loads(json.dumps(selection.to_dict()))
    assert record["kept"] == selection.kept and record["removed"] == [
        i for i in range(3) if i not in selection.kept
    ]
    assert record["calibration_tokens"] == CALIBRATION.numel() and record["calibration_shape"] == [6, 24]
    assert len(record["calibration_sha256"]) == 64 and record["seconds"] > 0
    other = measure_layer_selection(teacher, 2, method="scan", calibration_ids=CALIBRATION.flip(0))
    assert other.calibration_sha256 != selection.calibration_sha256
    assert "kept 2 of 3 layers" in selection.summary()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_layers": 4}, "between 1 and 3"),
        ({"num_layers": 5}, "between 1 and 3"),
        ({"num_layers": 0}, "between 1 and 3"),
        ({"num_layers": 2, "calibration_ids": None}, "pass calibration_ids"),
        ({"num_layers": 2, "calibration_ids": CALIBRATION[:, :1]}, "at least 2 tokens"),
        ({"num_layers": 2, "calibration_ids": CALIBRATION.float()}, "LongTensor"),
        ({"num_layers": 2, "method": "random"}, "even, scan, angular"),
    ],
)
def test_bad_input_is_refused_with_the_fix(kwargs, match):
    kwargs = {"method": "scan", "calibration_ids": CALIBRATION, **kwargs}
    with pytest.raises(ValueError, match=match):
        measure_layer_selection(tiny_gpt2(vocab_size=VOCAB, n_layer=4), **kwargs)


def test_a_teacher_whose_blocks_cannot_be_found_is_refused():
    teacher = tiny_gpt2(vocab_size=VOCAB, n_layer=4)
    teacher.config.n_layer = 5  # no ModuleList of 5 blocks
    with pytest.raises(ValueError, match="could not find the decoder blocks"):
        select_teacher_layers(teacher, 2, method="angular", calibration_ids=CALIBRATION)


def test_calibration_ids_from_blocks_takes_whole_training_blocks():
    blocks = [{"input_ids": list(range(i, i + 16))} for i in range(10)]
    ids = calibration_ids_from_blocks(blocks, 40)
    assert ids.shape == (3, 16) and ids[2, 0] == 2
    assert calibration_ids_from_blocks(blocks, 10_000).shape == (10, 16)
    with pytest.raises(ValueError, match="no blocks"):
        calibration_ids_from_blocks([], 40)


def _config(tmp_path, **overrides) -> DistillationConfig:
    kwargs = {
        "output_dir": str(tmp_path),
        "teacher_name_or_path": "unused",
        "dataset_name": "unused",
        "block_size": 8,
        "use_cpu": True,
        "report_to": "none",
        **overrides,
    }
    return DistillationConfig(**kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"student_layer_selection": "best"}, "even, scan, angular"),
        ({"student_layer_selection": "scan", "student_layers": [0, 1]}, "student_layers fixes the layers"),
        ({"student_layer_selection": "scan", "student_init": "lora"}, "student_init=layers"),
        ({"student_layer_selection": "angular", "layer_selection_tokens": 4}, "less than one training block"),
        ({"layer_selection_block": 0}, "layer_selection_block"),
    ],
)
def test_config_refuses_bad_selection_settings(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **overrides)


def test_build_student_records_the_selection_in_the_resolved_config_and_the_student(tmp_path):
    from distill.pipeline import build_student

    torch.manual_seed(0)
    teacher = _planted_teacher("llama")
    config = _config(
        tmp_path, student_num_layers=3, student_layer_selection="scan", layer_selection_tokens=48
    )
    blocks = [{"input_ids": row.tolist()} for row in _sample(teacher, seed=7)]
    student = build_student(config, teacher, train_blocks=blocks)
    record = config.student_layer_selection_record
    assert record["kept"] == [0, 1, 3] and record["calibration_shape"] == [2, 24]
    assert student.config.num_hidden_layers == 3
    assert student.config.fairdistill_layer_selection == record
    resolved = json.loads(open(write_resolved_config(config, str(tmp_path))).read())
    assert resolved["student_layer_selection_record"]["kept"] == [0, 1, 3]
    student.save_pretrained(tmp_path / "student")
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["fairdistill_layer_selection"]["kept"] == [0, 1, 3]
