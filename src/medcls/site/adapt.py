"""``medcls adapt``: BatchNorm statistics re-estimated on a site's unlabelled images (AdaBN,
Li et al., 2016). A network normalises each channel by the mean and variance it saw in
training; another scanner shifts them, and AdaBN replaces them by the site's. No label is
used, so nothing here can say whether accuracy improved: the report shows what can be seen
without labels (how many images the OOD flag rejects, the mix of predictions).

The OOD detector's Gaussians describe features under the old statistics; after AdaBN the
site's own images would be flagged at another rate, so the detector is re-scaled to flag its
stored share of the site's images (they become "familiar": foreign inputs are then judged
against this site)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from medcls.config import config_from_dict
from medcls.core.version import __version__
from medcls.data.prepared import to_model_input
from medcls.evaluation.evaluate import resolve_checkpoint
from medcls.inference.predictor import Predictor, decide
from medcls.models.checkpoint import SiteAdaptation, SiteState, load_checkpoint, save_checkpoint
from medcls.models.inference import logits_to_probs
from medcls.site.sample import SiteError, unlabelled_images

log = logging.getLogger(__name__)

# Fewer images give BatchNorm statistics noisier than the shift they correct (one batch of
# 32 is what training normalised by).
MIN_IMAGES = 32


@dataclass(frozen=True)
class SiteView:
    """What can be seen of a model on a site's images without labels."""

    n_images: int
    predicted: dict[str, float]  # share of the images predicted as each class
    ood_flagged: Optional[float]  # share flagged out-of-distribution (None: no detector)


@dataclass(frozen=True)
class SiteAdaptationResult:
    record: SiteAdaptation  # as stored in the new model (``ModelInfo.site.adaptation``)
    before: SiteView  # the model as it was
    after_old_threshold: SiteView  # adapted, with the detector as it was
    after: SiteView  # adapted, detector re-scaled on the site's images
    out: Path


def batchnorm_layers(net: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``net`` with running statistics; raises :class:`SiteError` if none."""
    layers = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    if not layers:
        raise SiteError("the network has no BatchNorm layers with running statistics: AdaBN has nothing to "
                        "re-estimate (use medcls calibrate with a labelled sample instead)")
    return layers


@torch.no_grad()
def adabn(net: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> int:
    """Replace the running mean and variance of every BatchNorm layer of ``net`` by their average
    over ``images`` (uint8 ``(N, H, W, C)``), in batches of near-equal size; nothing else changes
    (dropout stays off). Returns the number of layers; raises :class:`SiteError` if there are none."""
    layers = batchnorm_layers(net)
    momenta = [bn.momentum for bn in layers]
    net.eval()
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the batches, not an exponential one
            bn.train()
        for chunk in np.array_split(images, max(1, round(len(images) / batch_size))):
            net(to_model_input(torch.from_numpy(np.ascontiguousarray(chunk))))
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        net.eval()
    return len(layers)


def site_view(predictor: Predictor, logits: np.ndarray, scores: Optional[np.ndarray]) -> SiteView:
    info = predictor.info
    pred = decide(logits_to_probs(logits, info.temperature), info)
    return SiteView(int(len(logits)), {c: float(np.mean(pred == k)) for k, c in enumerate(info.classes)},
                    None if scores is None else float(np.mean(~predictor.ood.in_distribution(scores))))


def adapt_site(model: str | Path, data: str | Path, out: str | Path | None = None,
               quiet: bool = False) -> SiteAdaptationResult:
    """AdaBN on the unlabelled images under ``data``; writes the adapted model to ``out`` (default:
    ``<model name>-adapted.pt`` in the current folder) with its provenance in ``ModelInfo.site.adaptation``."""
    ckpt = resolve_checkpoint(model)[0]
    net, info = load_checkpoint(ckpt)
    batchnorm_layers(net)  # refused before any image is read
    site = unlabelled_images(data, info, quiet)
    if len(site.paths) < MIN_IMAGES:
        raise SiteError(f"{data}: {len(site.paths)} readable images; AdaBN needs at least {MIN_IMAGES} "
                        f"(its statistics would be noisier than the shift they correct)")
    if info.site is not None and info.site.calibration is not None:
        log.warning("%s was calibrated at a site before; adapting changes its outputs: run medcls calibrate "
                    "again on the adapted model", ckpt)
    batch = config_from_dict(info.config).data.batch_size
    before = Predictor(net, info, batch)
    before_view = site_view(before, *before.outputs(site.images))

    adapted_net = load_checkpoint(ckpt)[0]  # the first copy carries the predictor's feature taps
    layers = adabn(adapted_net, site.images, max(batch, 64))
    adapted = Predictor(adapted_net, info, batch)
    if adapted.ood is None:
        old_view = after_view = site_view(adapted, adapted.logits(site.images), None)
        ood_state = None
    else:
        logits, features = adapted.backend.outputs(site.images)
        old_view = site_view(adapted, logits, adapted.ood.score(features, logits))
        adapted.ood.set_threshold(features, logits, info.ood.flag_rate)
        after_view = site_view(adapted, logits, adapted.ood.score(features, logits))
        ood_state = adapted.ood.to_state()
    record = SiteAdaptation(
        data=str(site.root), data_sha256=site.sha256, n_images=len(site.paths), batchnorm_layers=layers,
        ood_threshold_before=None if info.ood is None else info.ood.threshold,
        ood_threshold=None if ood_state is None else ood_state.threshold,
        fitted_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        medcls_version=__version__)
    new_info = dataclasses.replace(info, ood=ood_state,
                                   site=dataclasses.replace(info.site or SiteState(), adaptation=record))
    out = Path(out) if out is not None else Path(f"{ckpt.stem}-adapted.pt")
    save_checkpoint(out, adapted_net, new_info)
    log.info("AdaBN on %d images of %s (%d BatchNorm layers): written to %s", len(site.paths), data, layers, out)
    return SiteAdaptationResult(record, before_view, old_view, after_view, out)
