"""Trains the micro SAM 2 checkpoint (assets/micro/) on generated scenes and clips, on the CPU.

    python tools/train_micro.py --out assets/micro/sam2_micro.pt

Image path: up to six objects of each image, each prompted by a box or by one positive click, then two correction
clicks sampled in the error region with the previous low-res logits fed back as mask input. Video path: a box,
click or mask prompt on frame 0 of a clip (every other clip has an object leaving the view), the following frames
tracked through the memory attention and memory encoder, losses on every frame. A last phase trains all but the
image encoder at a restarted learning rate, on box prompts and clips (`train_decoder`). Losses follow the SAM 2 paper
(dice on masks, the best of the multimask outputs; L1 on the IoU prediction; BCE on the object score, present and
absent weighted equally) except that SAM 2's focal term is a BCE, class-balanced for the first steps (see
`mask_loss`); mask losses are computed on the decoder's low-res logits.
Everything is seeded and training is bitwise reproducible for a given thread count (see `main`); the checkpoint is
`{"model": state_dict}`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sam2_adapter.geometry import mask_iou  # noqa: E402
from sam2_adapter.models import CheckpointError, load_model, spec_for  # noqa: E402
from sam2_adapter.scenes import make_clip, make_scene  # noqa: E402
from sam2_adapter.segment import ImageSegmenter  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
W_BCE, W_DICE, W_IOU, W_OBJ = 1.0, 1.0, 1.0, 1.0


def to_input(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> normalised (B, 3, H, W) float, as SAM2Transforms does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def encode(model, images: np.ndarray):
    """Backbone features of a batch: per-level (HW, B, C) tokens, their position encodings and sizes."""
    _, feats, pos, sizes = model._prepare_backbone_features(model.forward_image(to_input(images)))
    return feats, pos, sizes


def as_maps(model, feats, sizes, index):
    """Token features of images `index` as (N, C, h, w) maps, the no-memory embedding added (image path)."""
    maps = []
    for level, (f, s) in enumerate(zip(feats, sizes)):
        f = f[:, index]
        if level == len(feats) - 1:
            f = f + model.no_mem_embed
        maps.append(f.permute(1, 2, 0).reshape(len(index), -1, *s))
    return maps


def mask_loss(logits: torch.Tensor, target: torch.Tensor, balance: float = 1.0) -> torch.Tensor:
    """Per-mask BCE + dice. logits, target (soft, in [0, 1]): (N, M, H, W) -> (N, M).

    `balance` 1 averages the BCE of object and background pixels separately; 0 averages over all pixels.
    Most objects here cover a few per cent of the image. From scratch with the pixel average (SAM 2's recipe, for its
    large objects) the decoder settles on one prompt-independent mask per image with logits so negative that dice,
    through the sigmoid, has no gradient left; the class-balanced average keeps a missed object pixel costly however
    small the object is. But its best logit is positive wherever the object is merely a few per cent likely, so its
    masks spill onto their surroundings: training ramps `balance` down to 0 once the prompts are told apart."""
    logits = logits.clamp(-32, 32)  # masks of objects scored absent are -1024: no gradient, bounded value
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2)
    pos, neg = target.flatten(2), 1 - target.flatten(2)
    ratio = neg.sum(-1, keepdim=True) / pos.sum(-1, keepdim=True).clamp(min=1)
    weight = pos * ratio**balance + neg  # balance 1: object and background pixels weigh the same in all
    bce = (per_pixel * weight).sum(-1) / weight.sum(-1)
    prob = logits.sigmoid().flatten(2)
    dice = 1 - (2 * (prob * pos).sum(-1) + 1) / (prob.sum(-1) + pos.sum(-1) + 1)
    return W_BCE * bce + W_DICE * dice


def sam_losses(outputs, target: torch.Tensor, present: torch.Tensor,
               balance: float, obj_weight: float = W_OBJ) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses of one `_forward_sam_heads` output against (N, H, W) targets; (loss, chosen low-res logits).

    Computed on the decoder's low-res logits against the target's area fractions at that resolution: the
    masks users get are those logits upsampled, and it costs a sixteenth of the full-resolution loss."""
    low_multi, _, ious, _, _, _, obj_logits = outputs
    tgt = F.adaptive_avg_pool2d(target[:, None].float(), low_multi.shape[-2:])
    per_mask = mask_loss(low_multi, tgt.expand_as(low_multi), balance)
    best = per_mask.argmin(dim=1)
    rows = torch.arange(len(best))
    with torch.no_grad():
        pred, truth = low_multi > 0, tgt > 0.5
        inter = (pred & truth).flatten(2).sum(-1).float()
        union = (pred | truth).flatten(2).sum(-1).float()
        true_iou = inter / union.clamp(min=1)
    pres = present.float()
    loss_mask = (per_mask[rows, best] * pres).sum() / pres.sum().clamp(min=1)
    loss_iou = ((ious - true_iou).abs().mean(1) * pres).sum() / pres.sum().clamp(min=1)
    # absent objects are a few frames of a few clips: their half of the object-score loss keeps them from being
    # outvoted (an always-present score is what an unweighted mean learns)
    absent = 1 - pres
    weight = pres / pres.sum().clamp(min=1) + absent / absent.sum().clamp(min=1)
    loss_obj = F.binary_cross_entropy_with_logits(obj_logits[:, 0], pres, reduction="none")
    loss_obj = (loss_obj * weight).sum() / weight.sum()
    return loss_mask + W_IOU * loss_iou + obj_weight * loss_obj, low_multi[rows, best][:, None]


def sample_pixel(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One uniformly drawn (x, y) pixel of each (N, H, W) mask (masks must be non-empty)."""
    n, h, w = masks.shape
    # the k-th pixel of a mask is where its running count first reaches k (5x faster than torch.multinomial)
    counted = masks.flatten(1).cumsum(1)
    k = (torch.rand(n, generator=gen) * counted[:, -1]).long() + 1
    idx = torch.searchsorted(counted, k[:, None])[:, 0]
    return torch.stack([idx % w, idx // w], dim=1).float() + 0.5


def correction_click(pred: torch.Tensor, target: torch.Tensor, gen: torch.Generator):
    """A click drawn from the error region: positive on a missed pixel, negative on a false one."""
    error = pred ^ target
    empty = ~error.flatten(1).any(1)
    error[empty] = target[empty]  # nothing to correct: click on the object again
    xy = sample_pixel(error, gen)
    ix, iy = xy[:, 0].long(), xy[:, 1].long()
    label = target[torch.arange(len(ix)), iy, ix].int()
    return xy, label


def jitter_boxes(boxes: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=1)
    noise = torch.randn(boxes.shape, generator=gen) * 0.1 * side
    return (boxes + noise.clamp(-20, 20)).clamp(0, size)


def image_step(model, rng, gen, batch: int, per_image: int, size: int, balance: float, pool=None,
               box_share: float = 0.5, rounds: int = 3, obj_weight: float = W_OBJ) -> torch.Tensor:
    """Every prompted object of `batch` scenes: a box (`box_share` of them) or one click, then `rounds` - 1
    correction clicks with the previous logits as mask input."""
    if pool:
        scenes = [pool[i] for i in rng.choice(len(pool), size=batch, replace=False)]
    else:
        scenes = [make_scene(rng, size, size) for _ in range(batch)]
    feats, _, sizes = encode(model, np.stack([s.image for s in scenes]))
    index, masks, boxes = [], [], []
    for i, scene in enumerate(scenes):
        for k in rng.permutation(len(scene.masks))[:per_image]:
            index.append(i)
            masks.append(scene.masks[k])
            boxes.append(scene.boxes[k])
    target = torch.from_numpy(np.stack(masks))
    maps = as_maps(model, feats, sizes, index)
    embed, high_res = maps[-1], maps[:-1]
    present = torch.ones(len(index), dtype=torch.bool)

    n = len(index)
    use_box = torch.rand(n, generator=gen) < box_share
    box_pts = jitter_boxes(torch.from_numpy(np.stack(boxes)), size, gen).view(n, 2, 2)
    click = sample_pixel(target, gen)[:, None]
    total = 0.0
    prompts, prompts_logits = {}, {}
    for name, sel in (("box", use_box), ("click", ~use_box)):
        if sel.any():
            coords = box_pts[sel] if name == "box" else click[sel]
            labels = torch.tensor([2, 3] if name == "box" else [1]).repeat(int(sel.sum()), 1)
            prompts[name] = (sel, coords, labels)
    for rnd in range(rounds):
        for name, (sel, coords, labels) in prompts.items():
            out = model._forward_sam_heads(
                backbone_features=embed[sel],
                point_inputs={"point_coords": coords, "point_labels": labels},
                mask_inputs=prompts_logits.get(name) if rnd else None,
                high_res_features=[h[sel] for h in high_res],
                multimask_output=(rnd == 0 and name == "click"),
            )
            loss, logits = sam_losses(out, target[sel], present[sel], balance, obj_weight)
            total = total + loss
            prompts_logits[name] = logits.detach()
            pred = F.interpolate(logits.detach(), size=(size, size), mode="bilinear")[:, 0] > 0
            xy, lab = correction_click(pred, target[sel], gen)
            prompts[name] = (sel, torch.cat([coords, xy[:, None]], 1), torch.cat([labels, lab[:, None]], 1))
    return total / (2 * rounds)


def video_step(model, rng, gen, clips: int, frames: int, size: int, balance: float, stride: int = 2) -> torch.Tensor:
    """Every object of `clips` clips prompted on frame 0 and tracked over `frames` frames. The clips are drawn
    `stride` times longer and every `stride`-th frame is kept: faster motion per step, and clips long enough
    for objects to leave the view and come back (what teaches the object score to say absent)."""
    # every other clip has an object leaving the view: without them 4 % of the frames lack their object, and the
    # object score learns to say present whatever the frame shows
    data = [make_clip(rng, n_frames=frames * stride, height=size, width=size,
                      leave_view=True if c % 2 == 0 else None) for c in range(clips)]
    feats, pos, sizes = encode(model, np.concatenate([c.frames[::stride] for c in data]))
    pairs = [(c, k) for c, clip in enumerate(data) for k in range(len(clip.kinds))]
    masks = torch.from_numpy(np.stack([data[c].masks[::stride, k] for c, k in pairs], axis=1))  # (T, N, H, W)
    visible = torch.from_numpy(np.stack([data[c].visible[::stride, k] for c, k in pairs], axis=1))  # (T, N)
    n = len(pairs)
    kind = rng.choice(["box", "click", "mask"], p=[0.5, 0.3, 0.2])
    point_inputs, mask_inputs = None, None
    if kind == "box":
        boxes = torch.from_numpy(np.stack([_box(m) for m in masks[0]]))
        point_inputs = {"point_coords": jitter_boxes(boxes, size, gen).view(n, 2, 2),
                        "point_labels": torch.tensor([[2, 3]]).repeat(n, 1)}
    elif kind == "click":
        point_inputs = {"point_coords": sample_pixel(masks[0], gen)[:, None], "point_labels": torch.ones(n, 1, dtype=torch.int)}
    else:
        mask_inputs = masks[0][:, None].float()

    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    total = 0.0
    for t in range(frames):
        index = [c * frames + t for c, _ in pairs]
        current, sam_out, _, _ = model._track_step(
            t, t == 0, [f[:, index] for f in feats], [p[:, index] for p in pos], sizes,
            point_inputs if t == 0 else None, mask_inputs if t == 0 else None,
            output_dict, frames, False, None,
        )
        _, _, _, low, high, obj_ptr, obj_logits = sam_out
        current.update(pred_masks=low, pred_masks_high_res=high, obj_ptr=obj_ptr)
        model._encode_memory_in_output([f[:, index] for f in feats], sizes, current["point_inputs"], True, high,
                                       obj_logits, current)
        output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = current
        if not (t == 0 and kind == "mask"):  # a mask prompt is passed through as the output: nothing to learn
            loss, _ = sam_losses(sam_out, masks[t], visible[t], balance)
            total = total + loss
    return total / frames


def _box(mask: torch.Tensor) -> np.ndarray:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def init_positions(model, amplitude: float, rng: np.random.Generator) -> None:
    """Starts Hiera's background position embedding (zeros in SAM 2, learned) as a smooth 2D sine code, `amplitude`
    times the spread of the patch embedding's output.

    With zeros the encoder is translation-equivariant, so the only place the mask decoder learns where a prompt is
    from is the positional encoding inside its attention (4 dimensions a head at this width). Its masks then stay
    the same for every prompt of an image for thousands of steps. Features that carry their position give
    the decoder's output a direct path from a box's coordinates to a region of the mask."""
    trunk = model.image_encoder.trunk
    channels, gh, gw = trunk.pos_embed.shape[1:]
    ys, xs = torch.meshgrid(torch.linspace(0, 1, gh), torch.linspace(0, 1, gw), indexing="ij")
    code = []
    for k in range(channels):
        freq = math.pi * (k // 4 + 1) / 2
        code.append((torch.sin, torch.cos)[k % 2](freq * (xs if k % 4 < 2 else ys)))
    with torch.no_grad():
        size = model.image_size
        spread = trunk.patch_embed(to_input(make_scene(rng, size, size).image[None])).std()
        trunk.pos_embed.copy_(torch.stack(code)[None] * spread * amplitude)


def warmup_cosine(opt, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine from the peak learning rate to 0 at `steps`."""
    warmup, steps = max(warmup, 1), max(steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def optimise(loss: torch.Tensor, opt, sched, params) -> float:
    """One optimiser step on `loss`, gradients clipped to norm 1; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss.item()


def train_decoder(model, args, size: int, start: float) -> None:
    """The last phase: the image encoder frozen, everything else trained on fresh scenes with box prompts and, every
    `--decoder-video-every` steps, on clips; the learning rate restarted (`--decoder-lr`, cosine to 0 over
    `--decoder-steps`).

    The decoder, not the encoder, is what holds the box masks back (README: a linear probe on the features
    separates the objects far better than the decoder does), and at the end of the joint phase its learning rate
    has decayed to nothing. A step of one decoder pass on boxes, without the encoder's backward pass, costs about a
    third of a joint image step. The object-score loss is off in image steps: they only ever say "present", and with
    it on the score learned to say so on every frame; video steps (`--decoder-video-every`), which have absent
    frames, keep it; without them tracking got worse (README).
    Seeded on its own, so that it depends only on the weights it starts from: `--init <joint-phase checkpoint>
    --steps 0` gives what a whole run gives."""
    torch.manual_seed(args.seed + 2)
    rng = np.random.default_rng(args.seed + 2)
    gen = torch.Generator().manual_seed(args.seed + 2)
    for p in model.image_encoder.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.01)
    steps = args.decoder_steps
    sched = warmup_cosine(opt, 50, steps)
    running = []
    for step in range(steps):
        if args.decoder_video_every and (step + 1) % args.decoder_video_every == 0:
            loss = video_step(model, rng, gen, clips=3, frames=6, size=size, balance=0.0)
        else:
            loss = image_step(model, rng, gen, batch=args.batch, per_image=args.per_image, size=size, balance=0.0,
                              box_share=1.0, rounds=1, obj_weight=0.0)
        running.append(optimise(loss, opt, sched, params))
        if (step + 1) % args.log_every == 0:
            print(f"decoder step {step + 1}/{steps}  loss {np.mean(running):.3f}  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{time.time() - start:.0f} s", flush=True)
            running = []
        if (step + 1) % args.save_every == 0:
            save(model, args.out)


def validate(model, scenes) -> float:
    """Box-to-mask mIoU on held-out scenes, through the adapter's own `ImageSegmenter`, for the training log."""
    model.eval()
    segmenter = ImageSegmenter(model)
    ious = [mask_iou(result.full(), truth) for scene in scenes
            for result, truth in zip(segmenter.segment_boxes(segmenter.encode(scene.image), scene.boxes), scene.masks)]
    model.train()
    return float(np.mean(ious))


def _temporary(path: Path) -> Path:
    """Where `save` writes before the swap. Its stem is the output's: torch.save records the file's stem inside the
    archive, so a checkpoint's bytes depend on the name it was written under (README: retraining)."""
    tmp = path.with_suffix(".tmp")
    return tmp if tmp != path else path.with_suffix(".tmp~")


def save(model, path: Path) -> None:
    tmp = _temporary(path)
    try:
        torch.save({"model": model.state_dict()}, tmp)
        os.replace(tmp, path)  # a reader never sees half a checkpoint
    except (OSError, RuntimeError) as error:
        sys.exit(f"error: cannot write {path}: {error}")
    finally:
        tmp.unlink(missing_ok=True)  # an interrupted or failed save leaves no half file


def check_output(path: Path) -> None:
    """Fails before any training where the checkpoint could not be written at the end."""
    folder = path.parent
    if not path.name or path.name in (".", "..") or path.is_dir():
        sys.exit(f"error: --out {path} is a folder; name the checkpoint file to write")
    if not folder.is_dir():
        sys.exit(f"error: output directory {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        sys.exit(f"error: cannot write {path}: permission denied")
    tmp = _temporary(path)
    try:
        with open(tmp, "xb"):
            pass
        tmp.unlink()
    except OSError as error:
        sys.exit(f"error: cannot write {path}: {tmp} cannot be created ({error.strerror or error})")


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Counts, periods and learning rates in range, before any work (argparse's error: usage and exit 2)."""
    for name in ("steps", "image_only_steps", "warmup", "pool_steps", "balanced_steps", "balance_ramp",
                 "decoder_steps", "decoder_video_every", "validate_every"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    for name in ("video_every", "batch", "per_image", "threads", "log_every", "save_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("lr", "decoder_lr"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            parser.error(f"--{name.replace('_', '-')} must be a finite number above 0, got {getattr(args, name)}")
    if not (math.isfinite(args.position_init) and args.position_init >= 0):
        parser.error(f"--position-init must be a finite number >= 0, got {args.position_init}")
    if args.pool_steps and args.pool < args.batch:
        parser.error(f"--pool ({args.pool}) must hold at least --batch ({args.batch}) scenes while it is used "
                     f"(--pool-steps {args.pool_steps})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/micro/sam2_micro.pt"))
    parser.add_argument("--config", type=Path, default=spec_for("micro").config_path)
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint instead of scratch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2300, help="steps of the joint phase (everything trained)")
    parser.add_argument("--image-only-steps", type=int, default=1600, help="first steps without video batches")
    parser.add_argument("--video-every", type=int, default=3, help="after those, every Nth step is a video batch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8, help="images a step (image batches)")
    parser.add_argument("--per-image", type=int, default=6, help="objects prompted per image (at most)")
    # From scratch, SAM 2's decoder first settles on one prompt-independent mask per image; a small pool of
    # scenes seen again and again makes telling the prompts apart pay off fast, and that carries over.
    parser.add_argument("--pool", type=int, default=128, help="scenes of the warm-up pool")
    parser.add_argument("--pool-steps", type=int, default=700, help="first steps drawn from the pool")
    # Two threads: 0.78 s an image step on an idle 2-core machine against 1.0 s with one. The weights depend on the
    # thread count (it sets how sums split between threads): the shipped checkpoint is the one 2 threads write.
    # When other jobs share the cores, steps take far longer (two OpenMP workers wait on each other), but the
    # result stays the same.
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads; the checkpoint is bitwise the same for the same count (2 ships)")
    parser.add_argument("--position-init", type=float, default=3.0,
                        help="amplitude of the encoder's initial position code (0: SAM 2's zeros)")
    parser.add_argument("--balanced-steps", type=int, default=700,
                        help="first steps with the class-balanced BCE; it then turns into the pixel average over "
                             "--balance-ramp steps (see mask_loss)")
    parser.add_argument("--balance-ramp", type=int, default=300,
                        help="steps from the class-balanced BCE to the pixel average")
    parser.add_argument("--decoder-steps", type=int, default=800,
                        help="then steps with the image encoder frozen and the learning rate restarted (see "
                             "train_decoder)")
    parser.add_argument("--decoder-lr", type=float, default=3e-4, help="peak learning rate of those steps")
    parser.add_argument("--decoder-video-every", type=int, default=2,
                        help="in that phase every Nth step is a video batch (0: none)")
    parser.add_argument("--validate-every", type=int, default=0, help="print held-out box mIoU every N steps")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=100, help="also write the checkpoint every N steps")
    args = parser.parse_args(argv)
    check_numbers(parser, args)
    check_output(args.out)
    try:
        return train(args)
    except KeyboardInterrupt:
        print(f"interrupted: {args.out} holds the last checkpoint saved (every --save-every steps), if any",
              file=sys.stderr)
        return 130


def train(args: argparse.Namespace) -> int:

    torch.set_num_threads(args.threads)
    # Bitwise reproducible on a given machine and thread count, whatever else runs on it. Without this flag the
    # backward of indexing with repeated indices (every object of an image reads that image's features) adds into
    # the gradient from both threads with atomic adds, in whatever order the threads get there: under load, two
    # runs of one seed part within a few steps, and full runs ended up to 0.09 apart on the held-out figures
    # (README). The flag also puts oneDNN in its deterministic mode.
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    try:
        model = load_model(args.config, args.init, "cpu")
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    if args.position_init > 0 and args.init is None:
        init_positions(model, args.position_init, np.random.default_rng(args.seed + 1))
    model.train()
    size = model.image_size
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"model: {sum(p.numel() for p in params) / 1e6:.2f} M parameters, {size} px, seed {args.seed}", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = warmup_cosine(opt, args.warmup, args.steps)

    pool = [make_scene(rng, size, size) for _ in range(args.pool)]
    held_rng = np.random.default_rng(args.seed + 10_000)  # never drawn by the training
    held_out = [make_scene(held_rng, size, size) for _ in range(40)] if args.validate_every else []
    start, running = time.time(), {"image": [], "video": []}
    for step in range(args.steps):
        balance = min(1.0, max(0.0, 1 - (step - args.balanced_steps) / max(args.balance_ramp, 1)))
        video = step >= args.image_only_steps and step % args.video_every == 0
        if video:
            loss = video_step(model, rng, gen, clips=3, frames=6, size=size, balance=balance)
        else:
            loss = image_step(model, rng, gen, batch=args.batch, per_image=args.per_image, size=size, balance=balance,
                              pool=pool if step < args.pool_steps else None)
        running["video" if video else "image"].append(optimise(loss, opt, sched, params))
        if (step + 1) % args.log_every == 0:
            means = {k: f"{np.mean(v):.3f}" if v else "-" for k, v in running.items()}
            print(f"step {step + 1}/{args.steps}  loss image {means['image']} video {means['video']}  "
                  f"lr {sched.get_last_lr()[0]:.2e}  {time.time() - start:.0f} s", flush=True)
            running = {"image": [], "video": []}
        if args.validate_every and (step + 1) % args.validate_every == 0:
            print(f"  held-out box mIoU {validate(model, held_out):.3f}", flush=True)
        if (step + 1) % args.save_every == 0:
            save(model, args.out)
    if args.decoder_steps:
        train_decoder(model, args, size, start)
        if args.validate_every:
            print(f"  held-out box mIoU {validate(model, held_out):.3f}", flush=True)
    save(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
