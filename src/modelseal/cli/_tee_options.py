"""Click options generated from the TEE kinds' plugin descriptions, and deprecated aliases.

Kind-specific options come from :mod:`modelseal.tee.registry` (each kind's config declares
them once), so ``kbs serve``, ``evidence verify``, ``attest``, ``load`` and ``kbs get``
spell them the same way and a new kind needs no CLI edit. Older spellings stay accepted as
hidden aliases that print a deprecation note, so scripts keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from modelseal.errors import UnsupportedTee
from modelseal.tee import registry
from modelseal.tee.plugin import OptionSpec

F = TypeVar("F", bound=Callable[..., Any])

#: ``ctx.meta`` key holding the values given through deprecated aliases
_ALIASED = "modelseal.aliased"


def _click_type(spec: OptionSpec) -> click.ParamType[Any] | None:
    # existence is checked with the other settings (registry.check_options: exit 2
    # with the flag named), not by click
    if spec.type == "path":
        return click.Path()
    if spec.type == "dir":
        return click.Path(file_okay=False)
    return None


def _help(spec: OptionSpec) -> str:
    return f"{', '.join(registry.kinds_reading(spec))}: {spec.help}"


def spec_options(specs: Iterable[OptionSpec]) -> Callable[[F], F]:
    """Add one click option per spec (flag and ``MODELSEAL_*`` variable from its name);
    the help text names the kinds that read it, from the registry."""

    def decorate(f: F) -> F:
        for spec in reversed(tuple(specs)):
            if spec.type == "flag":
                f = click.option(
                    spec.flag,
                    spec.name,
                    envvar=spec.envvar,
                    is_flag=True,
                    default=False,
                    help=_help(spec),
                )(f)
            else:
                f = click.option(
                    spec.flag,
                    spec.name,
                    envvar=spec.envvar,
                    default=None,
                    type=_click_type(spec),
                    help=_help(spec),
                )(f)
        return f

    return decorate


def tee_values(params: dict[str, Any], specs: Iterable[OptionSpec]) -> dict[str, Any]:
    """Pop the spec options' values out of a command's keyword arguments."""
    return {spec.name: params.pop(spec.name) for spec in specs}


def tee_choice(kinds: Iterable[str], *extra: str) -> click.Choice[str]:
    """``--tee`` choices from the registry (plus e.g. ``auto``)."""
    return click.Choice([*extra, *kinds])


class CompositeTeeChoice(click.Choice[str]):
    """A session ``--tee`` choice: a CPU kind (or ``auto``), optionally joined with device
    kinds (``tdx+nvidia``). A device kind alone is no choice: a GPU's evidence only goes
    along with a CPU TEE's, bound to its session, so ``--tee nvidia`` is refused here,
    and the help lists it only after a ``+``."""

    def __init__(self, kinds: Iterable[str], *extra: str, device_alone: bool = False) -> None:
        listed = tuple(kinds)
        self.devices = tuple(k for k in listed if registry.plugin(k).device)
        #: a device kind may stand alone (``attest --tee nvidia``: standalone GPU evidence,
        #: not a session)
        self.device_alone = device_alone
        alone = listed if device_alone else (k for k in listed if k not in self.devices)
        super().__init__([*extra, *alone])

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        base = super().get_metavar(param, ctx)
        if not self.devices or base is None:
            return base
        return f"{base}[+{'|'.join(self.devices)}]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        primary, *parts = str(value).split(registry.COMPOSITE_SEPARATOR)
        if primary in self.devices and not self.device_alone:
            self.fail(
                f"{primary!r} is a device TEE: name the CPU TEE first (e.g. auto+{primary})",
                param,
                ctx,
            )
        converted = [str(super().convert(primary, param, ctx))]
        for part in parts:
            if part not in self.devices:
                self.fail(
                    f"{part!r} after '+' is not a device TEE kind "
                    f"(device kinds: {', '.join(self.devices) or 'none'})",
                    param,
                    ctx,
                )
            converted.append(part)
        joined = registry.COMPOSITE_SEPARATOR.join(converted)
        if not parts:  # one kind, already a choice
            return joined
        try:
            registry.split_composite(joined)
        except UnsupportedTee as exc:
            self.fail(str(exc), param, ctx)
        return joined


def session_kinds(kinds: Iterable[str]) -> list[str]:
    """``kinds`` less the device kinds: what a session (RCAR, attested TLS, a TD) can attest
    as on its own; a GPU's evidence only goes along with a CPU TEE's."""
    return [k for k in kinds if not registry.plugin(k).device]


def composite_tee_choice(
    kinds: Iterable[str], *extra: str, device_alone: bool = False
) -> CompositeTeeChoice:
    """Session ``--tee`` choices: CPU kinds (plus ``extra``, e.g. ``auto``), each optionally
    composed with device kinds (``auto+nvidia``); ``device_alone`` also offers a device
    kind by itself (evidence, not a session)."""
    return CompositeTeeChoice(kinds, *extra, device_alone=device_alone)


class RetiredOption(click.Option):
    """A hidden, deprecated spelling; knows its replacement (for the environment table)."""

    def __init__(
        self, *args: Any, replacement: str, replacement_envvar: str | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.replacement = replacement
        self.replacement_envvar = replacement_envvar


def deprecated_alias(
    old: str,
    new: str,
    name: str,
    *,
    envvar: str | None = None,
    new_envvar: str | None = None,
    **attrs: Any,
) -> Callable[[F], F]:
    """A hidden ``old`` flag (and optionally a retired variable ``envvar``) for option
    ``new`` (parameter ``name``). Using either prints one note naming its replacement;
    the command reads the value back with :func:`aliased`."""

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            used, instead = old, new
            if envvar and ctx.get_parameter_source(param.name or "") is ParameterSource.ENVIRONMENT:
                used, instead = envvar, new_envvar or new
            click.echo(f"note: {used} is deprecated; use {instead}", err=True)
            ctx.meta.setdefault(_ALIASED, {})[name] = value
        return value

    return click.option(
        old,
        f"_alias_{name}",
        cls=RetiredOption,
        replacement=new,
        replacement_envvar=new_envvar,
        hidden=True,
        expose_value=False,
        default=None,
        callback=remember,
        envvar=envvar,
        **attrs,
    )


def aliased(name: str, value: Any) -> Any:
    """``value`` if the current option was given, else what its deprecated alias carried."""
    if value is not None:
        return value
    return click.get_current_context().meta.get(_ALIASED, {}).get(name)


def verifier_options() -> tuple[OptionSpec, ...]:
    """Every kind's verifier options (``kbs serve``, ``evidence verify``)."""
    return registry.options()


def attester_options() -> tuple[OptionSpec, ...]:
    """Every kind's attester inputs (``attest``, ``load``, ``kbs get``)."""
    return registry.attester_options()
