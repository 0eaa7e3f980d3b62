"""Training the VQGAN on folders of images/videos or JSONL manifests (`lwm tokenizer train CONFIG`).

Loss = L1/L2 reconstruction + the quantizer's own terms (commitment; the "vq" codebook itself is
learned by EMA with k-means init and dead-code replacement) + optionally an LPIPS-style perceptual
distance + optionally, after `gan_start_step`, a PatchGAN hinge loss. Runs on one or many devices
through accelerate (`accelerate launch -m lwm tokenizer train ...`, or `torchrun` on CPUs), shows
a progress bar, logs PSNR / codebook usage / perplexity (and the perceptual distance) to the bar and
to `OUT/log.jsonl`, checkpoints to `OUT/checkpoints/step-N`, resumes from the latest one, and writes
the final model (`config.json` + `model.safetensors`) to `OUT`. Its settings are a `VQGANTrainConfig`,
read from YAML with dotted overrides by the same mechanism as `lwm train`'s (lwm.training.config), e.g.
configs/train/bundled-vqgan.yaml.

The perceptual loss needs pretrained VGG16 + LPIPS weights, which we neither ship nor download: it is
on only when the user supplies them (`perceptual_weights`, see `lwm.training.perceptual`). That
network stays frozen and outside the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lwm import media
from lwm.eval.reconstruction import codebook_usage, evaluate_reconstruction, format_metrics, psnr
from lwm.tokenizers import VQGAN, VQGANConfig
from lwm.training.config import read_config
from lwm.training.perceptual import PerceptualDistance, load_perceptual_distance


@dataclass
class VQGANTrainConfig:
    data: list[str]  # folders of images/videos, or .jsonl manifests with "image" or "video" keys
    output_dir: str  # checkpoints, logs and the final model
    model: str = "world"  # VQGAN preset name or JSON path; ignored when resuming or fine-tuning
    init_from: str | None = None  # a VQGAN folder to fine-tune instead of a fresh model
    # Fine-tune init_from's pixel decoder alone: the encoder and the codebook stay frozen, so every code
    # stays what it was and data tokenized with init_from stays valid.
    decoder_only: bool = False
    eval_data: list[str] = field(default_factory=list)  # held-out media; default: `holdout` of `data`
    holdout: float = 0.05
    frames_per_clip: int = 4  # frames drawn from a video each time it is sampled
    max_steps: int = 2000
    batch_size: int = 16  # frames per step
    learning_rate: float = 2e-4
    warmup_steps: int = 100  # linear warm-up, then cosine decay to `final_lr_fraction` of the peak
    final_lr_fraction: float = 0.1
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0  # 0 disables the perceptual loss; > 0 needs `perceptual_weights`
    perceptual_weights: str | None = None  # VGG16 + LPIPS weights file, never downloaded (lwm.training.perceptual)
    gan_weight: float = 0.0  # 0 disables the discriminator
    gan_start_step: int = 1000
    log_every: int = 25
    eval_every: int = 500
    save_every: int = 500
    eval_frames: int = 256
    num_workers: int = 0  # data loader workers
    seed: int = 0


PIXEL_DECODER = ("post_quant_conv.", "decoder.")  # what `decoder_only` trains: codes -> pixels


def load_vqgan_config(path: str | Path, overrides: list[str] = ()) -> VQGANTrainConfig:
    """The `lwm tokenizer train` config of a YAML file and its dotted `key=value` overrides."""
    return read_config(VQGANTrainConfig, path, overrides)


# ----------------------------------------------------------------------------- data


def find_media(paths: list[str]) -> list[tuple[str, str]]:
    """(kind, path) of every image/video under the given folders or listed in the given manifests."""
    items = []
    for source in map(Path, paths):
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                try:
                    kind = media.sniff_media_type(path)
                except media.MediaError:  # empty or unreadable: not media to train on
                    continue
                if kind is not None:
                    items.append((kind, str(path)))
        elif source.suffix == ".jsonl" and source.is_file():
            for number, line in enumerate(source.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{source}:{number}: not JSON ({error})") from None
                kind = "video" if "video" in record else "image" if "image" in record else None
                if kind is None:
                    continue  # text-only records of a mixed manifest
                path = Path(record[kind])
                items.append((kind, str(path if path.is_absolute() else source.parent / path)))
        elif source.is_file() and media.sniff_media_type(source):
            items.append((media.sniff_media_type(source), str(source)))
        else:
            raise ValueError(f"{source}: not a folder, a .jsonl manifest or a media file")
    if not items:
        raise ValueError(f"no images or videos found in {paths}")
    return items


class FrameDataset(Dataset):
    """Each item: `frames_per_clip` random frames (1 for an image) of one file, `[n, 3, R, R]` in [-1, 1];
    with `consecutive`, a random window of that many consecutive frames (an image or a shorter video
    held still on its last frame), for a VQGAN that compresses time."""

    def __init__(self, items: list[tuple[str, str]], resolution: int, frames_per_clip: int, consecutive: bool = False):
        self.items, self.resolution, self.frames_per_clip = items, resolution, frames_per_clip
        self.consecutive = consecutive

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        kind, path = self.items[index]
        frames = media.load_image(path)[None] if kind == "image" else media.load_video(path)
        if self.consecutive:
            start = random.randrange(max(1, len(frames) - self.frames_per_clip + 1))
            picks = [min(start + i, len(frames) - 1) for i in range(self.frames_per_clip)]
        else:
            picks = sorted(random.sample(range(len(frames)), min(self.frames_per_clip, len(frames))))
        return media.preprocess(frames[picks], self.resolution)


def _concat_frames(batch: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(batch)


def split_items(items, config: VQGANTrainConfig):
    if config.eval_data:
        return items, find_media(config.eval_data)
    shuffled = items[:]
    random.Random(config.seed).shuffle(shuffled)
    held_out = max(1, round(len(shuffled) * config.holdout)) if len(shuffled) > 1 else 0
    if held_out == 0:
        return shuffled, shuffled
    return shuffled[held_out:], shuffled[:held_out]


def load_eval_frames(items, resolution: int, limit: int) -> torch.Tensor:
    """Up to `limit` frames spread over the held-out files (deterministic)."""
    per_file = max(1, -(-limit // len(items)))
    frames = []
    for kind, path in items:
        clip = media.load_image(path)[None] if kind == "image" else media.load_video(path, max_frames=per_file)
        frames.append(media.preprocess(clip, resolution))
        if sum(len(f) for f in frames) >= limit:
            break
    return torch.cat(frames)[:limit]


def load_eval_clips(items, resolution: int, limit: int) -> tuple[torch.Tensor, list[int]]:
    """Whole held-out clips up to about `limit` frames in all (deterministic), and their lengths."""
    clips = []
    for kind, path in items:
        clips.append(media.preprocess(media.load_image(path)[None] if kind == "image" else media.load_video(path),
                                      resolution))
        if sum(len(c) for c in clips) >= limit:
            break
    return torch.cat(clips), [len(c) for c in clips]


# ----------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a real/fake logit per overlapping patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(channels, out, 4, stride, 1), nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- training


def _latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted((output_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def _lr_factor(step: int, config: VQGANTrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.final_lr_fraction + (1 - config.final_lr_fraction) * cosine


def _infinite(loader: DataLoader):
    while True:
        yield from loader


def load_perceptual(config: VQGANTrainConfig) -> PerceptualDistance | None:
    """The frozen perceptual network when the loss is on, else None; bad options or weights fail here,
    before any training."""
    if config.perceptual_weight < 0:
        raise ValueError(f"perceptual_weight must be >= 0, got {config.perceptual_weight}")
    if config.perceptual_weight > 0 and not config.perceptual_weights:
        raise ValueError("perceptual_weight > 0 needs perceptual_weights=PATH (VGG16 + LPIPS weights; "
                         "nothing is downloaded, see lwm/training/perceptual.py)")
    if config.perceptual_weights and config.perceptual_weight == 0:
        raise ValueError(f"perceptual_weights={config.perceptual_weights} is given but perceptual_weight is 0: "
                         "set a weight > 0 to use it, or drop the file")
    return load_perceptual_distance(config.perceptual_weights) if config.perceptual_weights else None


def train_vqgan(config: VQGANTrainConfig, resume: bool = False) -> dict:
    """Train (or resume) and return the final held-out metrics."""
    output_dir = Path(config.output_dir)
    perceptual = load_perceptual(config)
    # without a GPU, say so: accelerate then runs `torchrun` processes as one gloo group (else independently)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if perceptual is not None:  # frozen: not prepared, so neither wrapped for DDP nor checkpointed
        perceptual.to(accelerator.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed + accelerator.process_index)

    checkpoint = _latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:  # the weights come from the checkpoint below
        model = VQGAN(VQGANConfig.load(output_dir / "checkpoints" / "config.json"))
    elif config.init_from:
        model = VQGAN.from_pretrained(config.init_from).train()
    else:
        model = VQGAN(VQGANConfig.from_preset(config.model))
    model_config = model.config
    if config.decoder_only:
        if not config.init_from:
            raise ValueError("decoder_only fine-tunes the pixel decoder of a trained VQGAN: set init_from")
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(PIXEL_DECODER))

    k = model_config.temporal_compression
    if k > 1 and (config.frames_per_clip - 1) % k:
        raise ValueError(f"frames_per_clip={config.frames_per_clip}: a VQGAN with temporal_compression={k} trains on "
                         f"clips of 1 + {k}·n consecutive frames (e.g. {1 + k}, {1 + 2 * k})")
    train_items, eval_items = split_items(find_media(config.data), config)
    dataset = FrameDataset(train_items, model_config.resolution, config.frames_per_clip, consecutive=k > 1)
    clips_per_batch = max(1, config.batch_size // config.frames_per_clip)
    # Workers are spawned, not forked: this process decodes the held-out clips first, and a worker forked
    # after FFmpeg's decoding threads ran hangs in its first decode.
    loader = DataLoader(
        dataset, batch_size=clips_per_batch, shuffle=True, drop_last=len(dataset) >= clips_per_batch,
        num_workers=config.num_workers, collate_fn=torch.stack if k > 1 else _concat_frames,
        multiprocessing_context="spawn" if config.num_workers else None,
    )
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate, betas=(0.5, 0.9))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_lr_factor, config=config))
    use_gan = config.gan_weight > 0
    discriminator = PatchDiscriminator(model_config.in_channels) if use_gan else None
    if use_gan:
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.learning_rate, betas=(0.5, 0.9))
        model, discriminator, optimizer, d_optimizer, loader = accelerator.prepare(
            model, discriminator, optimizer, d_optimizer, loader
        )
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(schedule)

    step = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    elif accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "checkpoints").mkdir(exist_ok=True)
        model_config.save(output_dir / "checkpoints" / "config.json")
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    if k > 1:  # time is coded in groups, so the held-out frames are whole clips
        eval_frames, eval_clip_lengths = load_eval_clips(eval_items, model_config.resolution, config.eval_frames)
    else:
        eval_frames, eval_clip_lengths = load_eval_frames(eval_items, model_config.resolution, config.eval_frames), None
    batches = _infinite(loader)
    window_codes, window_psnr, window_perceptual = [], [], []
    progress = tqdm(total=config.max_steps, initial=step, desc="training VQGAN", disable=not accelerator.is_main_process)
    log_file = output_dir / "log.jsonl"
    metrics: dict = {}
    while step < config.max_steps:
        pixels = next(batches)
        if config.decoder_only:  # codes as they were: no EMA codebook update, no quantizer loss
            frozen = accelerator.unwrap_model(model)
            for module in (frozen.encoder, frozen.quant_conv, frozen.quantize):
                module.eval()
        output = model(pixels)
        reconstruction = output.reconstruction
        loss = config.l1_weight * F.l1_loss(reconstruction, pixels)
        if not config.decoder_only:
            loss = loss + output.quantizer_loss
        if config.l2_weight:
            loss = loss + config.l2_weight * F.mse_loss(reconstruction, pixels)
        if perceptual is not None:
            perceptual_loss = perceptual(reconstruction, pixels).mean()
            loss = loss + config.perceptual_weight * perceptual_loss
            window_perceptual.append(perceptual_loss.item())
        gan_active = use_gan and step >= config.gan_start_step
        if gan_active:
            loss = loss - config.gan_weight * discriminator(reconstruction).mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        if gan_active:  # hinge loss on real frames vs the (detached) reconstructions
            d_loss = F.relu(1 - discriminator(pixels)).mean() + F.relu(1 + discriminator(reconstruction.detach())).mean()
            d_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            d_optimizer.step()
        step += 1
        progress.update(1)

        window_codes.append(output.codes.detach().cpu())
        window_psnr.append(psnr(pixels.detach(), reconstruction.detach()))
        if step % config.log_every == 0 or step == config.max_steps:
            usage, perplexity = codebook_usage(torch.cat(window_codes), model_config.codebook_size)
            metrics = {"step": step, "loss": loss.item(), "psnr": sum(window_psnr) / len(window_psnr),
                       "codebook_usage": usage, "perplexity": perplexity}
            shown = {"loss": f"{metrics['loss']:.4f}", "psnr": f"{metrics['psnr']:.2f}", "usage": f"{usage:.2f}",
                     "ppl": f"{perplexity:.0f}"}
            if window_perceptual:  # the unweighted distance, averaged like the PSNR over the steps since the last log
                metrics["perceptual"] = sum(window_perceptual) / len(window_perceptual)
                shown["perceptual"] = f"{metrics['perceptual']:.4f}"
            window_codes, window_psnr, window_perceptual = [], [], []
            progress.set_postfix(shown)
            _append_log(accelerator, log_file, metrics)
        if step % config.eval_every == 0 and step < config.max_steps:
            held_out = evaluate_reconstruction(accelerator.unwrap_model(model), eval_frames, clip_lengths=eval_clip_lengths)
            _append_log(accelerator, log_file, {"step": step, **{f"eval_{k}": v for k, v in held_out.items()}})
            progress.write(f"step {step}: held-out PSNR {held_out['psnr']:.2f} dB, SSIM {held_out['ssim']:.3f}, "
                           f"codebook usage {held_out['codebook_usage']:.1%}, perplexity {held_out['perplexity']:.0f}")
        if step % config.save_every == 0 or step == config.max_steps:
            _save_checkpoint(accelerator, output_dir, step)
    progress.close()

    held_out = evaluate_reconstruction(accelerator.unwrap_model(model), eval_frames, clip_lengths=eval_clip_lengths)
    _append_log(accelerator, log_file, {"step": step, **{f"eval_{k}": v for k, v in held_out.items()}})
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(output_dir)
        (output_dir / "eval.json").write_text(json.dumps(held_out, indent=2) + "\n")
    accelerator.print(f"held-out: {format_metrics(held_out)}; model saved to {output_dir}")
    return held_out


def _append_log(accelerator: Accelerator, path: Path, record: dict) -> None:
    if accelerator.is_main_process:
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int = 2) -> None:
    target = output_dir / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
        old = sorted((output_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]
        for path in old:
            shutil.rmtree(path)
    accelerator.wait_for_everyone()
