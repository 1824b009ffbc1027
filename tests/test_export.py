"""Using a trained model outside fedgate: `fedgate export` round trips through peft and
AutoModel to 1e-5 on a tiny model, and refuses token gates with the reason."""

import pytest
import torch

from fedgate.cli import main
from fedgate.export import ExportError, clean_backbone, export
from fedgate.inject import adapter_modules
from fedgate.trained import load_trained

TINY = ["--backbone", "tiny-bert", "--max-steps", "1", "--quiet", "--no-baselines", "--set", "train.threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    assert main(["train", *TINY, "--set", "adapter.token-gate=false", "--out", str(root / "plain")]) == 0
    assert main(["train", *TINY, "--out", str(root / "gated")]) == 0  # token gates on (the default)
    assert main(["train", *TINY, "--set", "adapter.token-gate=false", "--set", "adapter.rank-scaling=rslora",
                 "--set", "adapter.r=4", "--out", str(root / "rslora")]) == 0
    return root


def _trained_with_nonzero_adapters(run):
    trained = load_trained(run)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, m in enumerate(adapter_modules(trained.model).values()):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.2)
            m.struct_logit.fill_(0.5 - 0.3 * i)  # a structural gate to fold, different per layer
        first = next(iter(adapter_modules(trained.model).values()))
        assert first.structural_gate() < 1.0
    return trained


def _inputs(tokenizer):
    return tokenizer(["How do I sort a list?", "Use sorted(); it returns a new list."], padding=True,
                     return_tensors="pt")


@pytest.mark.parametrize("run", ["plain", "rslora"])  # alpha / r and alpha / sqrt(r) (peft's use_rslora)
def test_peft_export_loads_in_peft_and_gives_the_same_backbone_outputs(runs, tmp_path, run):
    from peft import PeftModel

    trained = _trained_with_nonzero_adapters(runs / run)
    out = export(trained, "peft", tmp_path / "peft")
    assert (out / "adapter_config.json").is_file() and (out / "reward_head.safetensors").is_file()
    loaded = PeftModel.from_pretrained(clean_backbone(trained.model), str(out)).eval()
    batch = _inputs(trained.tokenizer)
    with torch.no_grad():
        want = trained.model.backbone(**batch).last_hidden_state
        got = loaded(**batch).last_hidden_state
        bare = clean_backbone(trained.model)(**batch).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(bare, want, atol=1e-3)


def test_merged_export_loads_with_automodel_and_gives_the_same_outputs(runs, tmp_path):
    from transformers import AutoModel, AutoTokenizer
    from safetensors.torch import load_file

    trained = _trained_with_nonzero_adapters(runs / "plain")
    out = export(trained, "merged", tmp_path / "merged")
    model = AutoModel.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    batch = _inputs(tokenizer)
    with torch.no_grad():
        assert torch.allclose(model(**batch).last_hidden_state, trained.model.backbone(**batch).last_hidden_state,
                              atol=1e-5)
    head = load_file(str(out / "reward_head.safetensors"))
    assert torch.equal(head["weight"], trained.model.head.weight.detach())


def test_token_gates_are_refused_with_the_reason_and_nothing_written(runs, tmp_path, capsys):
    trained = load_trained(runs / "gated")
    for fmt in ("peft", "merged"):
        with pytest.raises(ExportError, match="input-dependent token gate.*fedgate score"):
            export(trained, fmt, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()
    assert main(["export", str(runs / "gated"), "--format", "merged", "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedgate: error: cannot export as merged") and not (tmp_path / "cli").exists()


def test_export_command_writes_the_folder(runs, tmp_path, capsys):
    assert main(["export", str(runs / "plain"), "--format", "peft", "--out", str(tmp_path / "p")]) == 0
    assert "wrote peft export" in capsys.readouterr().out and (tmp_path / "p" / "reward_head.json").is_file()
