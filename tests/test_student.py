"""Unit tests for distill/student.py: layer maps, layer-copy students, config students, LoRA. CPU, fast."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft import PeftModel
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from distill.student import (
    count_parameters,
    decoder_layers,
    default_layer_map,
    lora_student,
    merge_lora,
    student_from_config,
    student_from_pretrained,
    student_from_teacher_layers,
)
from tests.assets import GPT2_VOCAB_SIZE, tiny_gpt2, tiny_llama


def tiny_qwen2(num_hidden_layers: int = 4) -> Qwen2ForCausalLM:
    """Qwen2 carries per-layer `layer_types` (here: 2 full-attention then 2 sliding-window layers)."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        max_window_layers=2,
        sliding_window=4,
    )
    return Qwen2ForCausalLM(config)


TEACHERS = {
    "gpt2": lambda: tiny_gpt2(n_layer=4),
    "llama": lambda: tiny_llama(num_hidden_layers=4),
    "llama-tied": lambda: tiny_llama(num_hidden_layers=4, tie_word_embeddings=True),
    "qwen2": tiny_qwen2,
}


@pytest.fixture(params=list(TEACHERS))
def teacher(request):
    return TEACHERS[request.param]().eval()


def _batch(seed: int = 0, batch: int = 2, length: int = 9) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 1000, (batch, length), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding on one row: the mask path must agree too
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def _logits(model, batch=None, **kwargs) -> torch.Tensor:
    return model(**(batch or _batch()), use_cache=False, **kwargs).logits


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state_equal(model, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), key


# ----------------------------------------------------------------------------------------------------
# default_layer_map
# ----------------------------------------------------------------------------------------------------


def test_default_layer_map_distilgpt2():
    assert default_layer_map(12, 6) == [0, 2, 4, 7, 9, 11]


def test_default_layer_map_smollm2_sizes():
    assert default_layer_map(30, 6) == [0, 6, 12, 17, 23, 29]
    # position 7 is exactly 14.5: halves round up
    assert default_layer_map(30, 15) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]


@pytest.mark.parametrize("n", [1, 2, 5, 12, 30])
def test_default_layer_map_identity(n):
    assert default_layer_map(n, n) == list(range(n))


def test_default_layer_map_single_layer_keeps_the_first_block():
    assert default_layer_map(12, 1) == [0]


def test_default_layer_map_properties():
    for n_teacher in range(1, 41):
        for n_student in range(1, n_teacher + 1):
            layers = default_layer_map(n_teacher, n_student)
            assert len(layers) == n_student
            assert all(a < b for a, b in zip(layers, layers[1:], strict=False)), (n_teacher, n_student)
            assert layers[0] == 0
            if n_student > 1:
                assert layers[-1] == n_teacher - 1
                for i, layer in enumerate(layers):  # nearest to the evenly spaced position, halves up
                    exact = i * (n_teacher - 1) / (n_student - 1)
                    assert exact - 0.5 < layer <= exact + 0.5 + 1e-9


def test_default_layer_map_rounds_halves_up():
    assert default_layer_map(6, 3) == [0, 3, 5]  # linspace: 0, 2.5, 5
    assert default_layer_map(4, 3) == [0, 2, 3]  # linspace: 0, 1.5, 3


@pytest.mark.parametrize(
    ("n_teacher", "n_student", "match"),
    [
        (6, 7, r"more layers than its teacher \(7 > 6\).*between 1 and 6"),
        (6, 0, "n_student must be a positive integer"),
        (0, 1, "n_teacher must be a positive integer"),
        (6, 2.0, "n_student must be a positive integer"),
        (6, True, "n_student must be a positive integer"),
    ],
)
def test_default_layer_map_errors(n_teacher, n_student, match):
    with pytest.raises(ValueError, match=match):
        default_layer_map(n_teacher, n_student)


# ----------------------------------------------------------------------------------------------------
# student_from_teacher_layers
# ----------------------------------------------------------------------------------------------------


def test_decoder_layers_found_generically():
    assert decoder_layers(tiny_gpt2(n_layer=3))[0] == "transformer.h"
    assert decoder_layers(tiny_llama(num_hidden_layers=3))[0] == "model.layers"
    assert decoder_layers(tiny_qwen2())[0] == "model.layers"


def test_all_layers_reproduce_the_teacher_exactly(teacher):
    student = student_from_teacher_layers(teacher, layers=[0, 1, 2, 3])
    assert type(student) is type(teacher)
    assert torch.equal(_logits(student), _logits(teacher))


def test_kept_blocks_and_shared_parts_are_the_teachers_tensors(teacher):
    student = student_from_teacher_layers(teacher, layers=[0, 3])
    prefix, _ = decoder_layers(teacher)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    renumber = {"0": "0", "1": "3"}
    n_block_keys = 0
    for key, value in student_state.items():
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1 :].split(".", 1)
            teacher_key = f"{prefix}.{renumber[index]}.{rest}"
            n_block_keys += 1
        else:
            teacher_key = key  # embeddings, position embeddings, final norm, LM head
        assert torch.equal(value, teacher_state[teacher_key]), key
        assert value.data_ptr() != teacher_state[teacher_key].data_ptr(), f"{key} shares memory"
    per_block = sum(1 for k in teacher_state if k.startswith(f"{prefix}.0."))
    assert n_block_keys == 2 * per_block
    assert len(student_state) == len(teacher_state) - 2 * per_block


def test_student_matches_teacher_with_blocks_deleted(teacher):
    """Plain-torch reference: a deep copy of the teacher with blocks 1 and 2 removed from its ModuleList."""
    student = student_from_teacher_layers(teacher, layers=[0, 3])
    reference = copy.deepcopy(teacher)
    _, blocks = decoder_layers(reference)
    del blocks[2]
    del blocks[1]
    if hasattr(reference.config, "layer_types"):
        # Qwen2 picks each block's mask (full / sliding window) from config.layer_types by position
        reference.config.layer_types = [teacher.config.layer_types[i] for i in (0, 3)]
    assert torch.equal(_logits(student), _logits(reference))


def test_num_layers_uses_the_default_map(teacher):
    student = student_from_teacher_layers(teacher, num_layers=2)  # default_layer_map(4, 2) == [0, 3]
    explicit = student_from_teacher_layers(teacher, layers=[0, 3])
    _assert_state_equal(student, _snapshot(explicit))


def test_layers_and_num_layers_together_or_neither():
    teacher = tiny_gpt2(n_layer=4)
    both = student_from_teacher_layers(teacher, layers=[1, 2], num_layers=2)
    assert both.config.num_hidden_layers == 2
    assert torch.equal(both.transformer.h[0].mlp.c_fc.weight, teacher.transformer.h[1].mlp.c_fc.weight)
    neither = student_from_teacher_layers(teacher)  # DistilGPT-2's ratio: half the depth, [0, 3]
    _assert_state_equal(neither, _snapshot(student_from_teacher_layers(teacher, layers=[0, 3])))
    assert student_from_teacher_layers(tiny_gpt2(n_layer=3)).config.num_hidden_layers == 2


def test_student_config(teacher):
    student = student_from_teacher_layers(teacher, layers=[1, 3])
    assert student.config.num_hidden_layers == 2
    assert len(decoder_layers(student)[1]) == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is a different object
    if isinstance(student, GPT2LMHeadModel):
        assert student.config.n_layer == 2  # an alias of num_hidden_layers
    if isinstance(student, Qwen2ForCausalLM):
        assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
        assert student.config.layer_types == ["full_attention", "sliding_attention"]


def test_cached_generation_matches_uncached(teacher):
    """Fresh blocks are numbered 0..n-1, so the KV cache (indexed by layer_idx) works in the student."""
    student = student_from_teacher_layers(teacher, layers=[1, 3])
    prompt = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(3))
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    cached = student.generate(prompt, use_cache=True, **kwargs)
    uncached = student.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_tied_embeddings_stay_tied(teacher):
    student = student_from_teacher_layers(teacher, layers=[0, 2])
    tied = teacher.get_output_embeddings().weight is teacher.get_input_embeddings().weight
    assert (student.get_output_embeddings().weight is student.get_input_embeddings().weight) == tied
    assert student.config.tie_word_embeddings == teacher.config.tie_word_embeddings


def test_teacher_is_neither_modified_nor_shared(teacher):
    before = _snapshot(teacher)
    student = student_from_teacher_layers(teacher, layers=[0, 3])
    _assert_state_equal(teacher, before)
    with torch.no_grad():
        for param in student.parameters():
            param.add_(1.0)
    _assert_state_equal(teacher, before)
    assert all(p.requires_grad for p in student.parameters())


def test_student_keeps_the_teachers_dtype_and_mode():
    teacher = tiny_llama(num_hidden_layers=4).to(torch.bfloat16).eval()
    student = student_from_teacher_layers(teacher, num_layers=2)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert not student.training
    assert student_from_teacher_layers(teacher.train(), num_layers=2).training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": [0, 4]}, r"layer 4 is out of range.*4 layers.*\[0, 3\]"),
        ({"layers": [-1, 2]}, r"layer -1 is out of range.*\[0, 3\]"),
        ({"layers": [1, 1]}, "duplicates"),
        ({"layers": [2, 0]}, r"strictly increasing.*\[0, 2\]"),
        ({"layers": []}, r"empty.*\[0, 3\]"),
        ({"layers": [0.0, 1]}, r"integers in \[0, 3\]"),
        ({"layers": [0, 1, 3], "num_layers": 2}, r"num_layers=2 but layers=\[0, 1, 3\] has 3 entries"),
        ({"num_layers": 5}, r"more layers than its teacher \(5 > 4\)"),
        ({"num_layers": 0}, "positive integer"),
    ],
)
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        student_from_teacher_layers(tiny_gpt2(n_layer=4), **kwargs)


def test_peft_teacher_is_rejected():
    with pytest.raises(TypeError, match="merge_lora"):
        student_from_teacher_layers(lora_student(tiny_gpt2(n_layer=2)), num_layers=1)


# ----------------------------------------------------------------------------------------------------
# student_from_config / student_from_pretrained
# ----------------------------------------------------------------------------------------------------


def test_student_from_config_dict():
    student = student_from_config({"model_type": "gpt2", "n_layer": 3, "n_embd": 32, "n_head": 2})
    assert isinstance(student, GPT2LMHeadModel)
    assert student.config.n_layer == 3
    assert student.config.vocab_size == GPT2_VOCAB_SIZE


def test_student_from_config_object_is_copied():
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2)
    student = student_from_config(config, vocab_size_from=1234)
    assert student.config.vocab_size == 1234 and config.vocab_size == GPT2_VOCAB_SIZE
    assert student.get_output_embeddings().weight.shape == (1234, 32)


def test_student_from_config_vocab_from_teacher_and_tokenizer(gpt2_tok):
    llama_config = tiny_llama().config.to_dict()
    teacher = tiny_gpt2(vocab_size=500)
    assert student_from_config(llama_config, vocab_size_from=teacher).config.vocab_size == 500
    assert student_from_config(llama_config, vocab_size_from=teacher.config).config.vocab_size == 500
    student = student_from_config(llama_config, vocab_size_from=gpt2_tok)
    assert isinstance(student, LlamaForCausalLM)
    assert student.config.vocab_size == len(gpt2_tok) == GPT2_VOCAB_SIZE


def test_student_from_config_path_and_dtype(tmp_path):
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    from_dir = student_from_config(tmp_path, dtype="bfloat16")
    from_file = student_from_config(tmp_path / "config.json")
    assert from_dir.config.n_layer == from_file.config.n_layer == 2
    assert from_dir.dtype == torch.bfloat16 and from_file.dtype == torch.float32


def test_student_from_config_errors():
    with pytest.raises(ValueError, match="needs a 'model_type'"):
        student_from_config({"n_layer": 2})
    with pytest.raises(TypeError, match="vocab_size_from"):
        student_from_config({"model_type": "gpt2", "n_layer": 1}, vocab_size_from="many")


def test_student_from_pretrained(tmp_path):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path)
    loaded = student_from_pretrained(tmp_path)
    _assert_state_equal(loaded, _snapshot(model))


# ----------------------------------------------------------------------------------------------------
# LoRA students
# ----------------------------------------------------------------------------------------------------

LORA_TEACHERS = {"gpt2": lambda: tiny_gpt2(n_layer=2), "llama": lambda: tiny_llama(num_hidden_layers=2)}


@pytest.fixture(params=list(LORA_TEACHERS))
def lora_teacher(request):
    teacher = LORA_TEACHERS[request.param]().eval()
    teacher.requires_grad_(False)  # how the trainer holds its teacher
    return teacher


def _ce_step(model, lr: float = 1e-2) -> None:
    batch = _batch(seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = model(**batch, labels=batch["input_ids"], use_cache=False).loss
    loss.backward()
    optimizer.step()
    model.eval()


def test_lora_only_adapters_train(lora_teacher):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = lora_student(lora_teacher, r=4, alpha=8)
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    assert isinstance(student, PeftModel)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    n_trainable, n_total = count_parameters(student)
    assert n_trainable == sum(p.numel() for n, p in student.named_parameters() if n in trainable)
    assert n_total == sum(p.numel() for p in student.parameters())
    # B starts at zero: before training, the student is exactly the teacher
    assert torch.allclose(_logits(student), _logits(lora_teacher), atol=0, rtol=0)


def test_lora_targets(lora_teacher):
    student = lora_student(lora_teacher)
    config = student.peft_config["default"]
    assert config.r == 16 and config.lora_alpha == 32 and config.lora_dropout == 0.05
    assert config.fan_in_fan_out == isinstance(lora_teacher, GPT2LMHeadModel)  # GPT-2's Conv1D
    wrapped = {name.rsplit(".", 1)[-1] for name, m in student.named_modules() if hasattr(m, "lora_A")}
    if isinstance(lora_teacher, GPT2LMHeadModel):
        assert wrapped == {"c_attn", "c_proj", "c_fc"}
    else:
        assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert "lm_head" not in wrapped
    if isinstance(lora_teacher, LlamaForCausalLM):
        narrow = lora_student(lora_teacher, target_modules=["q_proj", "v_proj"])
        names = {name.rsplit(".", 1)[-1] for name, m in narrow.named_modules() if hasattr(m, "lora_A")}
        assert names == {"q_proj", "v_proj"}


def test_lora_training_save_load_merge(lora_teacher, tmp_path):
    teacher_before = _snapshot(lora_teacher)
    student = lora_student(lora_teacher, r=4, alpha=8)
    base_before = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    adapters_before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}

    _ce_step(student)

    for name, param in student.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), f"frozen {name} changed"
    changed = {n for n, p in student.named_parameters() if n in adapters_before}
    changed = {n for n in changed if not torch.equal(student.get_parameter(n), adapters_before[n])}
    # lora_B starts at 0, so the first step moves every B (and A only through weight decay)
    assert {n for n in adapters_before if "lora_B" in n} <= changed
    _assert_state_equal(lora_teacher, teacher_before)
    assert not any("lora" in n for n in lora_teacher.state_dict())

    trained = _logits(student)
    assert not torch.allclose(trained, _logits(lora_teacher))

    student.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)

    reloaded = PeftModel.from_pretrained(copy.deepcopy(lora_teacher), tmp_path).eval()
    assert torch.allclose(_logits(reloaded), trained, atol=1e-6, rtol=0)

    merged = merge_lora(student)
    assert type(merged) is type(lora_teacher)
    assert not any("lora" in n for n in merged.state_dict())
    assert torch.allclose(_logits(merged), trained, atol=1e-5, rtol=0)
    _assert_state_equal(lora_teacher, teacher_before)


def test_merge_lora_rejects_plain_models():
    with pytest.raises(TypeError, match="peft.PeftModel"):
        merge_lora(tiny_gpt2())


def test_count_parameters_counts_tied_weights_once():
    model = tiny_gpt2(n_layer=1)
    trainable, total = count_parameters(model)
    unique = {p.data_ptr(): p.numel() for p in model.state_dict().values()}
    assert trainable == total == sum(unique.values())
    model.transformer.wpe.requires_grad_(False)
    assert count_parameters(model) == (total - model.transformer.wpe.weight.numel(), total)
