"""Errors from the command line: exit status 2, the message verbatim on one line saying what to do, never a
traceback (items 13, 14, 16, 17 of docs/reliability.md)."""

from __future__ import annotations

import pytest

from loopmeta.errors import ConfigError
from loopmeta.model_configs import load_config


def test_events_path_that_is_a_folder(cli, tmp_path):
    (tmp_path / "events.jsonl").mkdir()
    code, err = cli("--config", "deepseek_ocr2_hf", "--no-torchlens", "--out", tmp_path)
    assert code == 2 and ("cannot write the events file" in err or "transformers 5.x" in err)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_max_new_tokens_must_be_positive(cli, value):
    code, err = cli("--max-new-tokens", value)
    assert code == 2 and "is not a positive whole number" in err


@pytest.mark.parametrize("device, message", [("cuda", "has no CUDA device"), ("nonsense", "is not a device")])
def test_device(cli, device, message, tmp_path):
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    code, err = cli("--device", device, "--out", tmp_path)
    assert code == 2 and message in err


def test_option_must_be_key_value(cli):
    code, err = cli("--option", "expert_ledger")
    assert code == 2 and "is not KEY=VALUE" in err


def test_an_undecodable_image_is_named(cli, tmp_path):
    image = tmp_path / "page.png"
    image.write_text("not an image")
    code, err = cli("--image", image, "--out", tmp_path / "out", "--no-torchlens")
    assert code == 2 and ("page.png cannot be decoded" in err or "transformers 5.x" in err)


def test_errors_are_printed_verbatim(cli, tmp_path, stream):
    (tmp_path / "empty.toml").write_text('name = "deepseek_ocr_v1"\n')
    code, err = cli("--from-events", stream, "--config", tmp_path / "empty.toml", "--out", tmp_path / "out")
    assert code == 2 and "has no [[targets]]" in err  # brackets are text, not markup


@pytest.mark.parametrize("toml, message", [
    ('targets = 5\n', "targets must be list"),
    ('trace = 5\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\n', "trace must be dict"),
    ('[[targets]]\nrole = "s"\npattern = ""\nstep = true\n[[trace.rebind]]\nmodule_of = "x"\nname = "y"\n',
     "needs replacement"),
    ('[requires]\ntransformers = 5\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\n', "requires must be dict of str"),
    ('[requires]\ntransformers = "newest"\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\n',
     "is not a version specifier"),
    ('adaptor = "x"\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\n', "unknown keys ['adaptor']"),
    ('[[targets]]\nrole = "s"\npattern = ""\n', "exactly one target must have step = true"),
    ('adapter = "broken"\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\non_enter = "f"\n',
     "adapter 'broken' cannot be imported: SyntaxError"),
    ('adapter = "missing_import"\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\non_enter = "f"\n',
     "cannot be imported: ModuleNotFoundError"),
])
def test_config_errors_name_the_key(tmp_path, cli, stream, toml, message):
    (tmp_path / "broken.py").write_text("def f(call:\n")
    (tmp_path / "missing_import.py").write_text("import no_such_package_here\n")
    path = tmp_path / "m.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=None) as err:
        load_config(path)
    assert message in str(err.value)
    code, text = cli("--from-events", stream, "--config", path, "--out", tmp_path / "out")
    assert code == 2 and message in text


def test_a_config_without_a_step_target_is_refused_at_load(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[[targets]]\nrole = "layer"\npattern = "layers[%d]"\naxis = "layer"\n')
    with pytest.raises(ConfigError, match="exactly one target must have step = true"):
        load_config(path)


def test_a_missing_torchvision_is_named_with_its_fix():
    import torch

    from loopmeta.model_configs.hf import load_error

    error = load_error("some/ocr-model", ImportError("No module named 'torchvision'"))
    assert "needs torchvision" in str(error) and torch.__version__ in str(error)
    assert "docs/models/README.md" in str(error)
    assert "torchvision" not in str(load_error("m", OSError("no such folder")))
