"""Training loop of the segmentation model (segmentation.md §6 and §8; paper eq. 7-9).

* MoSE: soft-IoU cost of every (sample, annotation) pair, relaxed OT coupling (row sums <= gamma,
  column sums = beta), loss = <T*, C> + lambda * KL(t || pi/S) with the reference normalisation
  (see methods.segmentation.ot). Single decoder: beta-weighted CE + soft Dice.
* Adam (lr, weight decay); ReduceLROnPlateau and the gamma scheduler both watch, once per epoch,
  the cumulative mean of all per-iteration training losses since epoch 0 (the reference's signal;
  ``plateau_signal="cumulative"``) or the epoch's mean training loss (``"epoch"``, which reacts
  within a short schedule).
* Model selection: the weights with the lowest validation GED (compact weighted form, K x S samples,
  hard argmax maps, annotations weighted by beta), checked every ``val_every`` epochs; without a
  validation split the last weights are kept. The history also records the GED's terms (val_cross,
  val_sample_diversity) and, for MoSE, the mean largest routing weight (val_pi_max) and the mean
  latent sigma, to tell why a model's GED is what it is.
* CUDA: bf16 autocast for the network, float32 for probabilities, costs and the loss; channels_last;
  the backbone and head compiled for MoSE (``segmentation.compile=auto``, :func:`compile_model`)
  for the training steps and the per-epoch validation; the returned model is eager
  (:func:`uncompile_model`).
  The only host synchronisation inside an epoch is the OT solve's copy of the B x N x M cost;
  losses are accumulated on the device and read once per epoch. CPU: float32 throughout.
* Randomness: initialisation, batch order, augmentation and latent noise each come from their own
  generator seeded from (seed, purpose); on CPU the same seed gives the same weights.
* Progress: a tqdm bar on a terminal; elsewhere one line per epoch with ``OSTEOBENCH_EPOCH_LINES=1``
  (bench.progress).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from bench.checkpoint import Resumer, loop_state, restore_loop
from bench.progress import epoch_line
from bench.stage import derive_seed
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.appearance import augment_appearance
from methods.segmentation.occlusion import occlude_bones
from methods.segmentation.data import SegData, augment
from methods.segmentation.model import ModelSpec, SegOutput, build_model

LogFn = Callable[[str, float, int], None]


@dataclass
class TrainResult:
    model: torch.nn.Module
    best_epoch: int                   # epoch (0-based) whose weights were kept
    best_val_ged: float               # their validation GED (nan without a validation split)
    epochs: int                       # epochs run
    seconds_per_epoch: float          # mean wall time of a training epoch (validation excluded)
    history: list[dict] = field(default_factory=list)   # one dict of logged metrics per epoch
    compile: str = "off"              # the torch.compile mode used (segmentation.compile, auto resolved)


def make_spec(cfg: SegmentationConfig, canvas: tuple[int, int], classes: int) -> ModelSpec:
    return ModelSpec(kind=cfg.model, classes=classes, widths=cfg.widths, experts=cfg.experts,
                     samples=cfg.samples, latent=cfg.latent, head=cfg.head, bn_momentum=cfg.bn_momentum,
                     canvas=tuple(canvas), standardize=cfg.standardize, standardize_over=cfg.standardize_over,
                     convs=cfg.convs, canonical_laterality=cfg.canonical_laterality, prior=cfg.prior)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def compile_model(model: torch.nn.Module, mode: str) -> str:
    """``segmentation.compile``: compile the backbone and the head in place (methods.compiling) and
    return the mode used (``auto`` resolved for the model's kind and the device of its weights). The
    top-level forward stays eager: it draws the latent noise from a torch.Generator, which would
    break the graph; the two modules hold all the convolutions, BatchNorms and the modulation."""
    from methods.compiling import compile_module, segmentation_compile_mode

    mode = segmentation_compile_mode(mode, model.spec.kind, next(model.parameters()).device)
    for part in (model.backbone, model.head):
        compile_module(part, mode)
    return mode


def uncompile_model(model: torch.nn.Module) -> None:
    """Return the backbone and head of a :func:`compile_model` to eager calls. A trained model's
    evaluation and predictions meet batches of every size (the last batch of a split, the images of
    each side, the mirrored detection pass); with static shapes each new size compiled both modules
    again (smoke on 2 CPU cores: batches of 10, 9, 8 and 11 images, 47 s of recompilation after the
    last epoch; two quick trainings side by side on an H100 had not finished about 100 s after their
    last epoch), and past torch._dynamo's recompile limit it falls back to eager anyway."""
    from methods.compiling import uncompile_module

    for part in (model.backbone, model.head):
        uncompile_module(part)


def _generator(device: torch.device, seed: int, purpose: str) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, "segmentation", purpose))
    return gen


def forward_eval(model: torch.nn.Module, x: torch.Tensor, eval_samples: int,
                 generator: torch.Generator | None) -> SegOutput:
    """Compact form (eval_samples = 0) or the standard form with `eval_samples` draws."""
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(x.device):
        if eval_samples > 0:
            return model.sample_standard(x, eval_samples, generator=generator)
        return model(x, generator=generator)


def eval_batches(model: torch.nn.Module, data: SegData, *, batch_size: int = 8, eval_samples: int = 0,
                 seed: int = 0) -> Iterator[tuple[int, SegOutput]]:
    """(first index, model output) per batch of `data` in eval mode, the latent draws from one generator
    seeded with `seed` (so every evaluation of the same model sees the same samples)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=data.images.device)
    gen.manual_seed(seed)
    try:
        for start in range(0, len(data), batch_size):
            yield start, forward_eval(model, data.images[start:start + batch_size], eval_samples, gen)
    finally:
        model.train(was_training)


def iter_samples(model: torch.nn.Module, data: SegData, *, batch_size: int = 8, eval_samples: int = 0,
                 seed: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray, torch.Tensor]]:
    """Per image of `data`: (index, hard sample maps N x h x w uint8, weights N, mean probs C x h x w),
    cropped to the image's area on the canvas."""
    for start, out in eval_batches(model, data, batch_size=batch_size, eval_samples=eval_samples, seed=seed):
        maps = out.logits.float().argmax(2).to(torch.uint8).cpu().numpy()
        weights = out.weights.float().cpu().numpy()
        mean = out.mean_probs()
        for i in range(maps.shape[0]):
            pl = data.placements[start + i]
            rs, cs = slice(pl.top, pl.top + pl.size[0]), slice(pl.left, pl.left + pl.size[1])
            yield start + i, maps[i][:, rs, cs], weights[i], mean[i][:, rs, cs]


def annotations_of(data: SegData, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The used annotations of image `index` (M' x h x w uint8, cropped) and their weights."""
    pl = data.placements[index]
    beta = data.beta[index].cpu().numpy()
    keep = beta > 0
    lab = data.labels[index][:, pl.top:pl.top + pl.size[0], pl.left:pl.left + pl.size[1]].cpu().numpy()
    return lab[keep], beta[keep] / beta[keep].sum()


VAL_TERMS = ("cross", "sample_diversity")   # GED terms logged beside val_ged (annotation_diversity is fixed)


def validation_metrics(model: torch.nn.Module, data: SegData, *, batch_size: int = 8, eval_samples: int = 0,
                       seed: int = 0) -> dict[str, float]:
    """Means over images of the weighted GED between the model's samples and the annotations, of its
    terms (``cross`` E d(s, y) and ``sample_diversity`` E d(s, s'): methods.segmentation.evaluate) and
    of the largest routing weight max_k pi_k(x) (``pi_max``; 1 for the single decoder).

    The samples are those of :func:`iter_samples` (both read :func:`eval_batches`); the GED is computed
    on the model's device for a batch at a time (methods.segmentation.device_metrics), each image
    restricted to its area on the canvas, with one read-back at the end. The terms tell a GED that
    is high because the samples miss the annotations (cross) from one lowered by diverse samples."""
    from methods.segmentation.device_metrics import IGNORE, ged_from_terms, ged_terms_batched

    rows = torch.arange(data.canvas[0], device=data.images.device)
    cols = torch.arange(data.canvas[1], device=data.images.device)
    terms, pi_max = [], []
    for start, out in eval_batches(model, data, batch_size=batch_size, eval_samples=eval_samples, seed=seed):
        inside = torch.stack([((rows >= pl.top) & (rows < pl.top + pl.size[0]))[:, None]
                              & ((cols >= pl.left) & (cols < pl.left + pl.size[1]))[None, :]
                              for pl in data.placements[start:start + batch_size]])[:, None]   # B x 1 x rows x cols
        maps = out.logits.float().argmax(2).to(torch.uint8).masked_fill(~inside, IGNORE)
        ann = data.labels[start:start + batch_size].masked_fill(~inside, IGNORE)
        terms.append(ged_terms_batched(maps, ann, out.weights.float(), data.beta[start:start + batch_size]))
        pi_max.append(out.log_pi.float().exp().amax(dim=1).double())
    if not terms:
        return {"ged": float("nan"), **{t: float("nan") for t in VAL_TERMS}, "pi_max": float("nan")}
    per_image = torch.cat(terms)
    table = torch.cat([ged_from_terms(per_image)[:, None], per_image[:, :2], torch.cat(pi_max)[:, None]], dim=1)
    means = np.nanmean(table.cpu().numpy(), axis=0)
    return dict(zip(("ged", *VAL_TERMS, "pi_max"), (float(v) for v in means)))


def validation_ged(model: torch.nn.Module, data: SegData, *, batch_size: int = 8, eval_samples: int = 0,
                   seed: int = 0) -> float:
    """Mean over images of the weighted GED (:func:`validation_metrics`), what model selection reads."""
    return validation_metrics(model, data, batch_size=batch_size, eval_samples=eval_samples, seed=seed)["ged"]


def make_optimizer(model: torch.nn.Module, cfg: SegmentationConfig) -> torch.optim.Optimizer:
    """Adam (reference); the fused CUDA kernel on a GPU."""
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cuda or None)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: SegmentationConfig, x: torch.Tensor,
               y: torch.Tensor, beta: torch.Tensor, *, gamma: float, g_aug: torch.Generator,
               g_z: torch.Generator, flippable: torch.Tensor | None = None) -> torch.Tensor:
    """One optimiser step on a batch; returns the detached (loss, transport|ce, kl|dice) on the device.

    MoSE: soft-IoU costs, relaxed OT plan (one host synchronisation per forward pass), eq. 7 loss;
    single decoder: beta-weighted CE + soft Dice. With ``cfg.micro_batch`` the batch is augmented
    and its latent noise drawn whole, then forwarded in micro-batches whose gradients accumulate
    (each loss weighted by its share of the batch; both losses are means over images), so only
    BatchNorm's batch statistics differ from the whole-batch step. Shared by the training loop and
    `bench perf seg`. `flippable` (B bool): the images that may be flipped left-right (default all;
    methods.segmentation.data, canonical laterality).
    """
    if cfg.augment:
        x, y = augment(x, y, flip_p=cfg.flip_p, vflip_p=cfg.vflip_p, rotate_deg=cfg.rotate_deg,
                       scale_range=cfg.scale_range, generator=g_aug, flippable=flippable)
        x, y = occlude_bones(x, y, p=cfg.occlude_p, generator=g_aug)
        x = augment_appearance(x, y, frame_p=cfg.frame_p, gamma_p=cfg.intensity_gamma_p,
                               gamma_min=cfg.intensity_gamma_min, gamma_max=cfg.intensity_gamma_max,
                               generator=g_aug)
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    b = x.shape[0]
    chunk = cfg.micro_batch if 0 < cfg.micro_batch < b else b
    eps = latent_noise(model, b, g_z) if chunk < b else None
    opt.zero_grad(set_to_none=True)
    sums = torch.zeros(3, device=x.device)
    for start in range(0, b, chunk):
        part = slice(start, start + chunk)
        with autocast(x.device):
            out = model(x[part], generator=g_z, eps=None if eps is None else eps[part])
        terms = _loss_terms(out, y[part], beta[part], cfg, gamma)
        share = (min(b, start + chunk) - start) / b
        (terms[0] * share).backward()
        sums += torch.stack([t.detach().float() for t in terms]) * share
    opt.step()
    return sums


def latent_noise(model: torch.nn.Module, batch: int, generator: torch.Generator) -> torch.Tensor | None:
    """The B x K x S x L standard-normal draw MoSE's forward pass would make (None for the single decoder)."""
    spec = model.spec
    if spec.kind != "mose":
        return None
    return torch.randn(batch, spec.experts, spec.samples, spec.latent, generator=generator,
                       device=model.mu.device, dtype=model.mu.dtype)


def _loss_terms(out: SegOutput, y: torch.Tensor, beta: torch.Tensor, cfg: SegmentationConfig,
                gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, transport|ce, kl|dice) of one forward pass, each a mean over its images."""
    from methods.segmentation.ot import ot_loss, pixel_ce_cost, soft_iou_cost
    from methods.segmentation.single import ce_dice_loss

    if cfg.model == "mose":
        cost = soft_iou_cost(out.probs, y)          # integer maps: one class plane at a time
        if cfg.ce_weight > 0:                       # CE keeps a class whose softmax saturated learnable
            cost = cost + cfg.ce_weight * pixel_ce_cost(out.logits, y)
        res = ot_loss(cost, out.log_weights.float(), beta, gamma=gamma, lam=cfg.lam, solver=cfg.ot_solver)
        return res.loss, res.transport, res.kl
    return ce_dice_loss(out.logits[:, 0], y, beta)


def train_segmentation(cfg: SegmentationConfig, train: SegData, val: SegData | None, *, seed: int,
                       device: torch.device | str = "cpu", classes: int = 8, log: LogFn | None = None,
                       progress: bool = False, resume: Resumer | None = None) -> TrainResult:
    """Train the configured model on `train`, select by GED on `val`; see the module docstring.

    With `resume` (bench.checkpoint) the loop continues from a saved state and saves one at epoch
    ends when due: weights, Adam, both plateau schedulers, the three generators, the cumulative
    loss, the best weights so far and the history; a resumed training ends bit-identical (CPU).
    """
    from tqdm.auto import tqdm

    from methods.segmentation.ot import GammaScheduler

    cfg.validate()
    device = torch.device(device)
    model = build_model(make_spec(cfg, train.canvas, classes), seed=derive_seed(seed, "segmentation", "init"))
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    compiled = compile_model(model, cfg.compile)
    opt = make_optimizer(model, cfg)
    lr_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.lr_factor,
                                                          patience=cfg.lr_patience, min_lr=cfg.min_lr)
    gamma_sched = GammaScheduler(cfg.gamma_schedule, cfg.gamma0, cfg.gamma_anneal_epochs, cfg.gamma_patience)
    g_order, g_aug, g_z = (_generator(device, seed, p) for p in ("order", "augment", "latent"))
    mose = cfg.model == "mose"
    n = len(train)
    bs = min(cfg.batch_size, n)
    cum_sum, cum_count = 0.0, 0
    best = (float("inf"), -1, None)
    history: list[dict] = []
    train_seconds = 0.0
    start = 0
    parts = {"model": model, "opt": opt, "lr_sched": lr_sched, "gamma": gamma_sched}
    gens = {"order": g_order, "augment": g_aug, "latent": g_z}
    saved = resume.load(map_location=device) if resume is not None else None
    if saved is not None:
        start = restore_loop(saved, parts, gens)
        cum_sum, cum_count, train_seconds = saved["cum_sum"], saved["cum_count"], saved["train_seconds"]
        best, history = saved["best"], saved["history"]

    def resumable(epoch: int) -> dict:
        return loop_state(epoch, parts, gens, cum_sum=cum_sum, cum_count=cum_count, train_seconds=train_seconds,
                          best=best, history=history)

    for epoch in tqdm(range(start, cfg.epochs), disable=not progress, desc="segmentation", unit="epoch",
                      initial=start, total=cfg.epochs):
        started, val_seconds = time.perf_counter(), 0.0
        model.train()
        gamma = float(gamma_sched.gamma) if mose else 1.0
        order = torch.randperm(n, generator=g_order, device=device)
        sums = torch.zeros(3, device=device)                       # loss, transport|ce, kl|dice
        batches = 0
        for start in range(0, n - bs + 1, bs):                     # full batches only (BN, equal weight)
            idx = order[start:start + bs]
            sums += train_step(model, opt, cfg, train.images[idx], train.labels[idx], train.beta[idx],
                               gamma=gamma, g_aug=g_aug, g_z=g_z,
                               flippable=None if train.flippable is None else train.flippable[idx])
            batches += 1
        epoch_sums = sums.cpu().numpy()                            # the epoch's one read-back
        train_seconds += time.perf_counter() - started
        cum_sum += float(epoch_sums[0])
        cum_count += batches
        cum_mean = cum_sum / max(cum_count, 1)
        means = epoch_sums / max(batches, 1)
        row = {"train_loss": means[0], "lr": opt.param_groups[0]["lr"]}
        row.update({"transport": means[1], "kl": means[2], "gamma": gamma,
                    "sigma": float(model.log_sigma.detach().exp().mean())} if mose    # mean latent sigma
                   else {"ce": means[1], "dice_loss": means[2]})
        signal = cum_mean if cfg.plateau_signal == "cumulative" else float(means[0])
        lr_sched.step(signal)
        if mose:
            gamma_sched.step(epoch, signal)
        if val is not None and len(val) and ((epoch + 1) % cfg.val_every == 0 or epoch == cfg.epochs - 1):
            val_started = time.perf_counter()
            vm = validation_metrics(model, val, batch_size=cfg.predict_batch, seed=derive_seed(seed, "val"))
            val_seconds = time.perf_counter() - val_started
            v = vm["ged"]
            row["val_ged"] = v
            row.update({f"val_{t}": vm[t] for t in VAL_TERMS})
            if mose:
                row["val_pi_max"] = vm["pi_max"]
            if v < best[0]:
                best = (v, epoch, {k: t.detach().clone() for k, t in model.state_dict().items()})
        history.append({"epoch": epoch, **{k: float(v) for k, v in row.items()}})
        if not progress:
            epoch_line(f"segmentation ({cfg.model})", epoch, cfg.epochs, {**row, "val_s": val_seconds},
                       time.perf_counter() - started)
        if log is not None:
            for k, v in row.items():
                log(k, float(v), epoch)
        if resume is not None:
            resume.save_due(lambda: resumable(epoch))
    best_ged, best_epoch, state = best
    if state is not None:
        model.load_state_dict(state)
    else:
        best_ged, best_epoch = float("nan"), cfg.epochs - 1
    model.eval()
    uncompile_model(model)              # evaluation and predictions run eager (uncompile_model)
    return TrainResult(model, best_epoch, best_ged, cfg.epochs, train_seconds / cfg.epochs, history, compiled)
