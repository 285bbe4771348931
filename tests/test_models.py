import pytest

from tunesmith.config import ModelConfig
from tunesmith.errors import ModelError
from tunesmith.models import load_model, load_tokenizer, resolve_model_path, resolve_precision


def test_local_model_folder_loads_without_network(tiny_model_dir):
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    tokenizer = load_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    assert model.config.num_hidden_layers == 2
    assert tokenizer.pad_token is not None


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such folder"):
        resolve_model_path(str(tmp_path / "nope"))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_unknown_hub_name_offline_names_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="no-such-org/no-such-model"):
        load_tokenizer(ModelConfig(name="no-such-org/no-such-model"))


def test_pickle_weights_need_opt_in(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="allow_pickle"):
        load_model(ModelConfig(name=str(folder)))
    assert load_model(ModelConfig(name=str(folder), allow_pickle=True)).config.num_hidden_layers == 2


def test_precision_auto_follows_hardware(monkeypatch):
    import torch

    from tunesmith import models

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"


def test_torch_dtype_follows_the_precision(monkeypatch):
    import torch

    from tunesmith import models

    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert [models.torch_dtype(p, cpu) for p in ("fp32", "bf16", "fp16", "auto")] == [
        torch.float32, torch.bfloat16, torch.float16, torch.float32]


def test_a_full_run_model_loads_from_its_folder_and_the_base_from_its_name(tiny_model_dir, tmp_path):
    import shutil

    import torch

    from tunesmith.models import load_model_for, load_tokenizer_for

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    base = ModelConfig(name="no-such-org/no-such-model")  # never loaded for the finetuned weights
    model = load_model_for(model_dir, {"base_model": base.name}, "finetuned", base, torch.float32, "cpu")
    assert model.config.num_hidden_layers == 2 and model.dtype == torch.float32
    assert load_tokenizer_for(model_dir, base).pad_token is not None
    with pytest.raises(ModelError, match="no-such-org/no-such-model"):
        load_model_for(model_dir, {"base_model": base.name}, "base", base, torch.float32, "cpu")


def test_pickle_only_folder_is_refused_before_from_pretrained(tiny_model_dir, tmp_path, monkeypatch):
    """The rule every load shares (load_causal_lm), checked on the folder before transformers is asked: so it
    also holds for a 4-bit load, whose quantizer setup runs before transformers looks at weight files."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tunesmith.models import load_causal_lm, refuse_pickle_only

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    calls = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ModelError, match="allow_pickle=true"):
        load_causal_lm(ModelConfig(name=str(folder)), dtype=torch.float32)
    assert calls == []
    refuse_pickle_only(str(folder), ModelConfig(name=str(folder), allow_pickle=True))  # opted in
    refuse_pickle_only(str(tiny_model_dir), ModelConfig(name=str(tiny_model_dir)))  # safetensors present


def test_loads_in_several_threads_at_once_give_whole_models(tiny_model_dir):
    """from_pretrained swaps module-global init state while it builds a model; without the loading lock, loads in
    parallel threads (the UI's base and finetuned chats) left parameters on the meta device (measured: 20 of 20)."""
    import threading

    import torch

    from tunesmith.models import load_model

    meta, errors = [], []

    def load():
        try:
            model = load_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.float32, device="cpu")
            meta.extend(name for name, p in model.named_parameters() if p.device.type == "meta")
        except Exception as e:  # noqa: BLE001 - any failure of a thread fails the test below
            errors.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and meta == []
