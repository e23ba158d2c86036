"""What a `--style` names, and loading the networks it needs.

A style is one of:

- a style network's store name or catalog entry (`candy`), downloaded on first use;
- a named style of a multi-style network (`starry`), or any of its styles as `NETWORK:N`
  (`multistyle26:7`);
- an image file (`painting.jpg`): any picture as the style, through the arbitrary-style
  network;
- the path of a style network file in any supported format (`./model.pth`).

Several styles blend in one pass when they are all styles of one multi-style network (their
weights mix the network's style rows) or all images (their style vectors mix).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stylize.errors import StylizeError
from stylize.store import catalog
from stylize.store.convert import ARBITRARY, JOHNSON, MULTISTYLE, convert_style_file, family_of
from stylize.store.modelfile import read_header, read_model_file, read_model_meta

if TYPE_CHECKING:
    from torch import Tensor

ProgressCallback = Callable[..., None]
MessageCallback = Callable[[str], None]

ARBITRARY_NETWORK = "arbitrary"
# The first norm's scale table of a multi-style network: one row per style.
_STYLE_TABLE = "norm1.scale"
_INDEXED = re.compile(r"(?P<network>[a-z0-9][a-z0-9_-]{0,63}):(?P<index>.*)")


@dataclass(frozen=True)
class StyleRef:
    """One `--style` value, classified. Exactly one of `network` (a store name), `file` (a model
    file) and `image` (a style picture) is set; `index` picks a style of a multi-style
    network."""

    text: str
    label: str
    network: str | None = None
    file: Path | None = None
    image: Path | None = None
    index: int | None = None


def parse_style(text: str) -> StyleRef:
    """Classifies a `--style` value without loading anything (see the module's docstring)."""
    from stylize.engine.imageio import image_suffixes
    from stylize.store.paths import validate_name

    indexed = _INDEXED.fullmatch(text)
    if indexed and not Path(text).exists():
        network, index = indexed["network"], indexed["index"]
        if not index.isdigit() or len(index) > 6:
            raise StylizeError(
                f"{text}: after '{network}:' give the number of one of its styles, like {network}:0"
            )
        return StyleRef(text, f"{network}-{int(index)}", network=network, index=int(index))
    named = catalog.named_styles().get(text)
    if named is not None:
        return StyleRef(text, named.name, network=named.network, index=named.index)
    try:
        return StyleRef(text, validate_name(text), network=text)
    except StylizeError:
        pass
    path = Path(text)
    if not path.is_file():
        # Names are lowercase: `Candy` is not a file, but it is most likely `candy`.
        lowered = text.lower()
        network = lowered.split(":", 1)[0] if _INDEXED.fullmatch(lowered) else lowered
        if lowered != text and not path.exists():
            from stylize.store.paths import model_path

            try:
                known = (
                    network in catalog.load_catalog()
                    or (network == lowered and lowered in catalog.named_styles())
                    or model_path(network).is_file()
                )
            except StylizeError:  # not a model name at all
                known = False
            if known:
                raise StylizeError(f"no style named '{text}'; did you mean '{lowered}'?")
        raise StylizeError(
            f"style file not found: {path} (a style is a name from 'stylize models list', "
            "NETWORK:N, an image file or a model file)"
        )
    label = path.stem.split(".")[0] or "styled"
    if path.suffix.lower() in image_suffixes():
        return StyleRef(text, label, image=path)
    return StyleRef(text, label, file=path)


def blend_label(refs: Sequence[StyleRef]) -> str:
    """The style's part of output names: `starry`, or `starry+great-wave` for a blend."""
    return "+".join(dict.fromkeys(ref.label for ref in refs))


def blend_weights(count: int, weights: Sequence[float] | None) -> list[float]:
    """Weights for `count` styles, summing to 1 (equal when not given)."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise StylizeError(
            f"--style-blend has {len(weights)} weights for {count} styles: give one per style"
        )
    if any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise StylizeError("--style-blend weights must be 0 or more, and not all 0")
    total = sum(weights)
    return [weight / total for weight in weights]


@dataclass
class LoadedStyles:
    """The networks a set of styles needs. `family` says which fields are set:

    - johnson: `network` is the ready `TransformerNet`;
    - multistyle: `network` is the `MultiStyleNet`, `mix` its (styles,) weight vector;
    - arbitrary: `network` is the `ArbitraryNet`, `predictor` its `StylePredictor`,
      `images` the style pictures' paths and `mix` their weights.
    """

    family: str
    label: str
    network: Any
    mix: Tensor | None = None
    predictor: Any = None
    images: tuple[Path, ...] = ()

    def fixed_network(self) -> Any:
        """The ready `StyleNet` of a network style (not of style images, which depend on the
        photo when blended with its own style)."""
        if self.family == MULTISTYLE:
            return self.network.bind(self.mix)
        if self.family == JOHNSON:
            return self.network
        raise ValueError("style images have no fixed network")


def load_styles(
    refs: Sequence[StyleRef],
    weights: Sequence[float] | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> LoadedStyles:
    """Loads (downloading on first use) what `refs` blended by `weights` need; the callbacks
    follow a download as for `registry.pull_model`."""
    messages = {"on_warning": on_warning, "on_info": on_info}
    import torch

    if not refs:
        raise StylizeError("give a style with --style")
    mix = blend_weights(len(refs), weights)
    label = blend_label(refs)
    if all(ref.image is not None for ref in refs):
        tensors, _ = _installed(ARBITRARY_NETWORK, ARBITRARY, on_progress, **messages)
        from stylize.engine.arbitrary import load_arbitrary

        predictor, network = load_arbitrary(tensors)
        images = tuple(ref.image for ref in refs if ref.image is not None)
        return LoadedStyles(ARBITRARY, label, network, torch.tensor(mix), predictor, images)
    if any(ref.image is not None for ref in refs):
        raise StylizeError(
            "style images blend only with other style images, not with style networks"
        )
    _check_one_network(refs)
    ref = refs[0]
    if ref.file is not None:
        tensors, meta = convert_style_file(ref.file)
        where, styles = str(ref.file), _styles_in(meta, tensors)
        if family_of(meta) == MULTISTYLE:
            raise StylizeError(
                f"{where} holds {styles} styles: import it first ('stylize models import "
                f"{where} --name NAME'), then use NAME:N"
            )
        vector = _style_vector(refs, mix, where, family_of(meta), styles)
    else:
        resolved = resolve_network_style(refs, weights, on_progress, **messages)
        assert resolved is not None
        tensors, meta = read_model_file(resolved.path)
        where, vector = resolved.name, resolved.vector
    network = network_of(tensors, meta)
    family = family_of(meta)
    mix_vector = None if vector is None else torch.tensor(vector, dtype=torch.float32)
    return LoadedStyles(family, label, network, mix_vector)


@dataclass(frozen=True)
class NetworkStyle:
    """Network styles resolved without loading the network (nor PyTorch): the installed model
    `name` at `path`, and for a multi-style network the `vector` of style weights."""

    label: str
    name: str
    path: Path
    family: str
    vector: tuple[float, ...] | None


def resolve_network_style(
    refs: Sequence[StyleRef],
    weights: Sequence[float] | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> NetworkStyle | None:
    """What `load_styles` would load for styles of one installed (or catalog) network, checked
    and pulled on first use but not loaded; None for style images and model files."""
    if not refs:
        raise StylizeError("give a style with --style")
    if any(ref.network is None or ref.image is not None for ref in refs):
        return None
    mix = blend_weights(len(refs), weights)
    _check_one_network(refs)
    name = refs[0].network
    assert name is not None
    path = _installed_path(name, on_progress, on_warning=on_warning, on_info=on_info)
    meta = read_model_meta(path)
    if meta["kind"] != "style":
        raise StylizeError(f"{name!r} is a {meta['kind']}, not a style model")
    family = family_of(meta)
    vector = _style_vector(refs, mix, name, family, _styles_in(meta, read_header(path)))
    return NetworkStyle(blend_label(refs), name, path, family, vector)


@dataclass(frozen=True)
class PaintingRefs:
    """Style pictures resolved without loading anything: the arbitrary-style model `name`
    installed at `path`, the `images` and their blend weights `mix`."""

    label: str
    name: str
    path: Path
    images: tuple[Path, ...]
    mix: tuple[float, ...]


def resolve_painting_style(
    refs: Sequence[StyleRef],
    weights: Sequence[float] | None = None,
    on_progress: ProgressCallback | None = None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> PaintingRefs | None:
    """What `load_styles` would load for style pictures, pulled on first use but not loaded;
    None unless every ref is a picture."""
    if not refs or any(ref.image is None for ref in refs):
        return None
    mix = tuple(blend_weights(len(refs), weights))
    path = _installed_path(ARBITRARY_NETWORK, on_progress, on_warning=on_warning, on_info=on_info)
    if family_of(read_model_meta(path)) != ARBITRARY:
        raise StylizeError(
            f"the installed model {ARBITRARY_NETWORK!r} is not the {ARBITRARY} network; remove "
            f"it with 'stylize models remove {ARBITRARY_NETWORK}' and try again"
        )
    images = tuple(ref.image for ref in refs if ref.image is not None)
    return PaintingRefs(blend_label(refs), ARBITRARY_NETWORK, path, images, mix)


def network_of(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Any:
    """The float32 network a native style model holds: a `TransformerNet`, a `MultiStyleNet`
    or (for the arbitrary-style pair) its `ArbitraryNet`."""
    family = family_of(dict(meta))
    if family == JOHNSON:
        from stylize.engine.transformer import TransformerConfig, load_transformer

        return load_transformer(tensors, TransformerConfig.from_dict(meta["architecture"]))
    if family == MULTISTYLE:
        from stylize.engine.multistyle import load_multistyle

        return load_multistyle(tensors)
    from stylize.engine.arbitrary import load_arbitrary

    return load_arbitrary(tensors)[1]


def _check_one_network(refs: Sequence[StyleRef]) -> None:
    networks = {ref.network or str(ref.file) for ref in refs}
    if len(refs) > 1 and (len(networks) > 1 or any(ref.index is None for ref in refs)):
        raise StylizeError(
            "styles blend only within one multi-style network (like -s starry -s great-wave, or "
            "-s multistyle26:3 -s multistyle26:7) or as style images"
        )


def _styles_in(meta: Mapping[str, Any], shapes: Mapping[str, Any]) -> int:
    """How many styles a network holds: 1, or the rows of a multi-style network's norm table
    (`shapes` maps tensor names to tensors or to safetensors header entries)."""
    if family_of(dict(meta)) != MULTISTYLE:
        return 1
    table = shapes.get(_STYLE_TABLE)
    shape = table.get("shape") if isinstance(table, Mapping) else getattr(table, "shape", None)
    if not shape:
        raise StylizeError(f"a 26-style network without its table {_STYLE_TABLE}")
    return int(shape[0])


def _style_vector(
    refs: Sequence[StyleRef], mix: Sequence[float], where: str, family: str, styles: int
) -> tuple[float, ...] | None:
    """The style weights of `refs` blended by `mix` for a multi-style network; None for a
    single-style one. StylizeError when the refs do not suit the network."""
    if family == JOHNSON:
        if refs[0].index is not None:
            raise StylizeError(f"{where} has one style: use --style {where}, without ':N'")
        return None
    if family == ARBITRARY:
        raise StylizeError(f"{where} takes a style image: use --style painting.jpg")
    if any(ref.index is None for ref in refs):
        raise StylizeError(
            f"{where} holds {styles} styles: pick one as {where}:N (N from 0 to "
            f"{styles - 1}) or a named style (see 'stylize models info {where}')"
        )
    vector = [0.0] * styles
    for ref, weight in zip(refs, mix, strict=True):
        assert ref.index is not None
        if not 0 <= ref.index < styles:
            raise StylizeError(f"{ref.text}: {where} has styles 0 to {styles - 1}, not {ref.index}")
        vector[ref.index] += weight
    return tuple(vector)


def style_names(network: str) -> dict[int, str]:
    """The names of a multi-style network's styles that have one, by index."""
    return {
        style.index: style.name
        for style in catalog.named_styles().values()
        if style.network == network
    }


def _installed(
    name: str,
    family: str | None,
    on_progress: ProgressCallback | None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of the installed style network `name`, pulling a catalog
    entry on first use."""
    path = _installed_path(name, on_progress, on_warning=on_warning, on_info=on_info)
    tensors, meta = read_model_file(path)
    if meta["kind"] != "style":
        raise StylizeError(f"{name!r} is a {meta['kind']}, not a style model")
    if family is not None and family_of(meta) != family:
        raise StylizeError(
            f"the installed model {name!r} is not the {family} network; remove it with "
            f"'stylize models remove {name}' and try again"
        )
    return tensors, meta


def _installed_path(
    name: str,
    on_progress: ProgressCallback | None,
    *,
    on_warning: MessageCallback | None = None,
    on_info: MessageCallback | None = None,
) -> Path:
    """The file of the installed model `name`, pulling a catalog entry on first use."""
    from stylize.store.paths import model_path

    path = model_path(name)
    if path.exists():
        return path
    from stylize.store.download import DownloadError
    from stylize.store.registry import pull

    entry = catalog.load_catalog().get(name)
    if entry is None:
        raise StylizeError(
            f"no style named {name!r} is installed or in the catalog "
            "(see 'stylize models list'; give a file as a path, like ./model.pth)"
        )
    if entry.kind != "style":
        raise StylizeError(f"{name!r} is a {entry.kind}, not a style model")
    try:
        return pull(name, on_progress, on_warning=on_warning, on_info=on_info)
    except DownloadError as error:
        # The error ends with how to install it without a download.
        raise StylizeError(f"the style network {name!r} is not installed: {error}") from None
