"""`tunesmith train --help` claims only the multi-process training that is tested: DDP and FSDP through --nproc
(tests/train/test_multiprocess.py, tests/train/test_fsdp.py)."""

from __future__ import annotations

import pytest

from tunesmith.cli import build_parser


def test_train_help_names_ddp_through_nproc_and_no_untested_backends(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no line breaks inside the phrases looked for
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--nproc N trains data parallel, either DDP" in text and "training.distributed=fsdp, PyTorch FSDP2" in text
    for untested in ("DeepSpeed", "deepspeed", "accelerate launch"):
        assert untested not in text
