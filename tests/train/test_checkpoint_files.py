"""The optimizer state goes straight into `optimizer.pt` inside the checkpoint's temporary folder: no in-memory
copy of it (2x the AdamW state in host memory), and the file loads back as it was."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from tunesmith.runs import RunPaths
from tunesmith.train import checkpoints
from tunesmith.train.state import TrainState


def test_optimizer_state_is_saved_to_its_file_not_to_a_buffer(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    targets = []
    save = torch.save

    def spying_save(obj, target, *args, **kwargs):
        targets.append(target)
        return save(obj, target, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", spying_save)
    paths = RunPaths(tmp_path / "run")
    folder = checkpoints.save_checkpoint(paths, 1, model, optimizer, TrainState(world_size=1), [{}], keep=2)

    assert len(targets) == 1 and not isinstance(targets[0], io.BytesIO)
    assert Path(targets[0].name).name == "optimizer.pt"
    loaded = torch.load(folder / "optimizer.pt", weights_only=True)
    expected = optimizer.state_dict()
    assert loaded["param_groups"] == expected["param_groups"]
    for key, state in expected["state"].items():
        for name, value in state.items():
            assert torch.equal(loaded["state"][key][name], value), name
    assert not list(paths.checkpoints.glob(".*tmp"))  # the temporary folder was renamed into place
