"""``mount`` and ``volume`` share ``load``'s option objects; where a meaning differs, the
help says what the option does for that command, while flag and variable stay ``load``'s."""

from __future__ import annotations

import click
import pytest

from modelseal.cli._loader_options import share_loader_options
from modelseal.cli.load import load
from modelseal.cli.mount import mount
from modelseal.cli.volume import create, open_


def _option(command: click.Command, name: str) -> click.Option:
    (found,) = [p for p in command.params if p.name == name]
    assert isinstance(found, click.Option)
    return found


def test_mount_measures_before_serving_and_load_keeps_its_words() -> None:
    assert (_option(load, "measure").help or "").startswith("After the load,")
    measure = _option(mount, "measure")
    assert "load" not in (measure.help or "")
    assert "before the mount serves" in (measure.help or "")
    assert measure.envvar == _option(load, "measure").envvar == "MODELSEAL_MEASURE"
    # a load's metrics file does not describe a mount
    assert "metrics_textfile" not in {p.name for p in mount.params}


@pytest.mark.parametrize("command", [create, open_])
def test_volume_help_speaks_of_a_volume(command: click.Command) -> None:
    names = {p.name for p in command.params}
    assert not names & {"model", "registry_ca", "workers", "model_digest", "measure",
                        "metrics_textfile"}  # fmt: skip
    for param in command.params:
        text = getattr(param, "help", "") or ""
        assert "model" not in text.lower(), (param.name, text)
        assert "registry" not in text.lower(), (param.name, text)
    assert "unless --key-source cdh" in (_option(command, "kbs_url").help or "")
    # the reworded options are copies: load's own help is unchanged
    assert _option(load, "kbs_url").help == "KBS base URL (else from model info)."


def test_a_help_text_for_an_option_not_shared_is_a_mistake() -> None:
    with pytest.raises(RuntimeError, match="dest"):
        share_loader_options(click.Command("x"), help_texts={"dest": "nowhere"})
