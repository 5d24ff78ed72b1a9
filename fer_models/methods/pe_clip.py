"""PE-CLIP: parameter-efficient CLIP for dynamic facial expression recognition (video clips).

Both CLIP towers stay frozen. What trains (the authors' released code, SAADI-Ibtissam/PE-CLIP, read
where the paper leaves the layout open):
- a Shared Adapter (ShA) after the attention branch of every block of both towers, at the tower's
  native width: Linear(d, d/8) - GELU - Linear(d/8, d), added residually to the branch's output. The
  authors' code builds one per block and tower (their "shared" is the design shared by both towers);
  `pe_clip_adapters: shared` keeps our earlier reading instead, one core whose tensors serve every
  block of both towers at the narrower width (ViT-B-16: 512), the wider tower reaching it through
  Linear(768, 512) and Linear(512, 768) (~0.85M parameters instead of ~2.6M);
- a Textual Adapter (TA) after the MLP branch of every text block: the same bottleneck at text width;
- a Temporal Dynamic Adapter (TDA) after the MLP branch of every vision block (the authors' placement;
  `pe_clip_tda: attn_mlp` adds a second one after the attention branch, behind the ShA, as we had it):
  LayerNorm -> Linear(d, d/8) -> GRU over the T frames (one sequence per token position) -> GELU ->
  Linear(d/8, d) (zero-initialised), times a dynamic scale relu(Linear(d, 1)), added residually;
- MaPLe prompts: learnable text context tokens replaced at each of the first `pe_clip_prompt_depth`
  text layers, each projected by its own Linear(text width -> vision width) into visual prompt
  tokens appended to (layer 0) and then replaced in the vision token sequence at the same depths;
- AU-based class prompts: each emotion is described by its prototypical action units in words.
Logits are cosine similarities between the clip embedding and the class text embeddings (7, or 8
with contempt) divided by the temperature 0.01; the loss is cross-entropy on the labelled clips. On
ViT-B-16 this trains 9,399,564 parameters, 5.91 % of the 159.0M in the model (the paper: ~9M, < 6 %).

The recipe (registered; the authors' training script): AdamW, adapters at 2e-4 (`lr`) and the prompt
learner at 3e-5 (`pe_clip_prompt_lr`), weight decay 0.01 on both, 30 epochs of cosine after 3 warm-up
epochs, 16 frames per clip, random resized crop (area 0.08-1) and flip, the same for every frame of a
clip; mixup (Beta 0.4) or FMix (Beta 1, decay 3) on 70 % of the batches. Left out: their brightness
jitter (0.5), the 4:3 odds of mixup to FMix (ours picks either at even odds) and their mixing weight
clipped to 0.3-0.7; their batch size (4) is kept.

Choices the paper leaves open, recorded here:
- adapters' up-projections start at zero (the authors' ShA/TA use PyTorch's default init), so every
  adapter starts as the identity and training begins from the frozen CLIP;
- TDA: the dynamic scale reads the LayerNorm'd input (as the authors' code does) and starts at
  exactly 1 (zero weight, bias 1): with a random init a ReLU that is negative for every token leaves
  the whole adapter without gradient for good (seen on the tiny CLIP). The GRU runs over
  the T frames of one clip per token position, never across clips (the authors' public code runs it
  over the flattened batch of frames, crossing clip boundaries); MaPLe prompt tokens pass through
  it like every other token. Single images are clips of T = 1.
- MaPLe (as in its reference code): 2 tokens, depth 9, prompts initialised N(0, 0.02), one projection
  per prompted layer; the layer-0 visual prompts go through the tower's ln_pre like the patch tokens;
  after the last prompted layer the prompt tokens stay in the sequence unchanged. The depth is capped
  at the towers' layer count (the 6-layer test CLIP prompts all 6). Prompt tokens are dropped before
  the vision pooling (ViT-B-16 pools the class token anyway).
- class prompt text: "X X <emotion>: <AU names>." where the two X tokens are the learnable context
  slots; neutral, which has no prototypical AUs, reads "relaxed face, no action units".
  The tokenizer is open_clip's for the backbone (the ViT-B-16 one for test configs).
- the text sequence is cut after the last end-of-text token: attention is causal, so the pooled
  end-of-text features are exactly those of the full 77-token context at a fraction of the cost.
- clip embedding: the projected frame embeddings are averaged over T, then L2-normalised (the
  authors' code); the temperature is fixed (not CLIP's learnt logit scale).
- frames are resized to the tower's native input size (224 for ViT-B-16, 32 for clip-tiny-test)
  and normalised with its mean/std; `cfg.image_size` does not apply (CLIP keeps its position grid).
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from fer_data.labels import EMOTIONS
from fer_models import backbones
from fer_models.config import TrainConfig
from fer_models.losses import masked_cross_entropy
from fer_models.methods import Method, class_targets, num_classes
from fer_models.registry import register

AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 12: "lip corner puller",
    14: "dimpler", 15: "lip corner depressor", 16: "lower lip depressor", 20: "lip stretcher", 23: "lip tightener",
    26: "jaw drop",
}
# Prototypical AUs per basic emotion (EMFACS), in fer_data.labels.EMOTIONS order.
EMOTION_AUS: dict[str, tuple[int, ...]] = {
    "neutral": (),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "disgust": (9, 15, 16),
    "anger": (4, 5, 7, 23),
    "contempt": (12, 14),  # one-sided in EMFACS; the 8th class when `emotion_classes: 8`
}
NO_AUS = "relaxed face, no action units"


def class_prompts(n_ctx: int, classes: int = 7) -> list[str]:
    """One text per emotion class; the leading X tokens are the slots MaPLe's learnable context fills."""
    slots = " ".join(["X"] * n_ctx)
    return [f"{slots} {name}: {', '.join(AU_NAMES[au] for au in EMOTION_AUS[name]) or NO_AUS}."
            for name in EMOTIONS[:classes]]


class TemporalDynamicAdapter(nn.Module):
    """Bottleneck with a GRU across the frames of a clip; zero up-projection, so identity at start."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = dim // reduction
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.up = nn.Linear(hidden, dim)
        self.scale = nn.Linear(dim, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.scale.weight)  # scale 1 for every token at start: none starts dead under the ReLU
        nn.init.ones_(self.scale.bias)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """x: [B*T, N, D] tokens, frame-major within each clip (index b*T + t)."""
        bt, n, _ = x.shape
        h = self.norm(x)
        z = self.down(h)
        seq = z.view(bt // frames, frames, n, -1).transpose(1, 2).reshape(-1, frames, z.shape[-1])
        seq, _ = self.gru(seq)  # [B*N, T, hidden]: time is the sequence axis, per token position
        z = seq.view(bt // frames, n, frames, -1).transpose(1, 2).reshape(bt, n, -1)
        return x + self.up(F.gelu(z)) * F.relu(self.scale(h))


class Bottleneck(nn.Module):
    """The shared core: Linear(c, c/r) - GELU - Linear(c/r, c), up-projection zero-initialised."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, dim // reduction)
        self.up = nn.Linear(dim // reduction, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.gelu(self.down(x)))


class SharedAdapter(nn.Module):
    """A residual bottleneck adapter; with a `core` of another width (the single shared core), one
    tower's view of it: projections in and out only where the widths differ."""

    def __init__(self, core: Bottleneck, width: int) -> None:
        super().__init__()
        self.core = core
        core_dim = core.down.in_features
        self.into = nn.Linear(width, core_dim) if width != core_dim else nn.Identity()
        self.out = nn.Linear(core_dim, width) if width != core_dim else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.out(self.core(self.into(x)))


class TextTower(nn.Module):
    """CLIP's text encoder in pieces (embed, blocks, pool), so MaPLe can swap tokens between blocks."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.blocks = clip.transformer.resblocks
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.pool_type = clip.text_pool_type
        self.eos_id = clip.text_eos_id
        self.width = clip.transformer.width
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def embed(self, tokens: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Token + position embeddings of `tokens` [C, L], and the causal mask cut to L."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        return x, {"attn_mask": self.attn_mask[:length, :length]}

    def pool(self, x: Tensor, tokens: Tensor) -> Tensor:
        """End-of-text features, final norm and projection (open_clip's encode_text tail)."""
        x = text_global_pool(self.ln_final(x), tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection


class PeClip(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["emotion"]
        clip = backbones.freeze(backbones.build_clip(cfg.backbone, cfg.pretrained))
        preprocess = getattr(clip.visual, "preprocess_cfg", {})  # open_clip's record; test configs lack one
        mean, std = preprocess.get("mean", OPENAI_DATASET_MEAN), preprocess.get("std", OPENAI_DATASET_STD)
        vision = backbones.Backbone(cfg.backbone, clip.visual, clip.visual.output_dim, mean, std)
        text = TextTower(clip)
        # Frozen towers under `backbone.` (the trainer's checkpoints leave those keys out).
        self.backbone = nn.ModuleDict({"vision": vision, "text": text})
        v_dim, t_dim = vision.width, text.width

        r = cfg.pe_clip_reduction
        self.tda_mlp = nn.ModuleList(TemporalDynamicAdapter(v_dim, r) for _ in vision.blocks)
        self.tda_attn = nn.ModuleList(TemporalDynamicAdapter(v_dim, r) for _ in vision.blocks) \
            if cfg.pe_clip_tda == "attn_mlp" else None
        if cfg.pe_clip_adapters == "per_block":
            self.vision_adapters = nn.ModuleList(SharedAdapter(Bottleneck(v_dim, r), v_dim) for _ in vision.blocks)
            self.text_adapters = nn.ModuleList(SharedAdapter(Bottleneck(t_dim, r), t_dim) for _ in text.blocks)
        else:  # one core for every block of both towers: one entry each, used by every block
            core = Bottleneck(min(v_dim, t_dim), r)
            self.vision_adapters = nn.ModuleList([SharedAdapter(core, v_dim)])
            self.text_adapters = nn.ModuleList([SharedAdapter(core, t_dim)])
        self.textual_adapters = nn.ModuleList(SharedAdapter(Bottleneck(t_dim, r), t_dim) for _ in text.blocks)
        self.prompt_lr = cfg.pe_clip_prompt_lr

        self.n_ctx = cfg.pe_clip_prompt_tokens
        depth = min(cfg.pe_clip_prompt_depth, len(vision.blocks), len(text.blocks))
        self.text_prompts = nn.ParameterList(nn.Parameter(0.02 * torch.randn(self.n_ctx, t_dim)) for _ in range(depth))
        self.prompt_proj = nn.ModuleList(nn.Linear(t_dim, v_dim) for _ in range(depth))

        tokenizer = open_clip.get_tokenizer("ViT-B-16" if cfg.backbone in backbones.TEST_CONFIGS else cfg.backbone)
        self.classes = num_classes(cfg, "emotion")
        tokens = tokenizer(class_prompts(self.n_ctx, self.classes))
        self.register_buffer("tokens", tokens[:, : int(tokens.argmax(-1).max()) + 1], persistent=False)
        self.temperature = cfg.pe_clip_temperature

    def encode_text(self) -> Tensor:
        """The class embeddings [classes, E], L2-normalised: MaPLe context replaced at each prompted layer."""
        text = self.backbone["text"]
        x, kwargs = text.embed(self.tokens)
        for i, block in enumerate(text.blocks):
            if i < len(self.text_prompts):  # layer 0's context replaces the X token embeddings, positions kept
                ctx = self.text_prompts[i] + (text.positional_embedding[1 : 1 + self.n_ctx] if i == 0 else 0)
                x = torch.cat([x[:, :1], ctx.expand(len(x), -1, -1), x[:, 1 + self.n_ctx :]], dim=1)
            attn, mlp = backbones.residual_branches(block)
            x = x + _block_adapter(self.text_adapters, i)(attn(x, **kwargs))
            x = x + self.textual_adapters[i](mlp(x))
        return F.normalize(text.pool(x, self.tokens), dim=-1)

    def encode_video(self, clips: Tensor) -> Tensor:
        """uint8 clips [B, T, 3, H, W] (or images [B, 3, H, W]) -> clip embeddings [B, E], L2-normalised."""
        if clips.dim() == 4:
            clips = clips.unsqueeze(1)
        b, t = clips.shape[:2]
        vision = self.backbone["vision"]
        x, kwargs = vision.embed(clips.flatten(0, 1))
        visual_prompts = [proj(ctx) for proj, ctx in zip(self.prompt_proj, self.text_prompts)]
        x = torch.cat([x, vision.visual.ln_pre(visual_prompts[0]).expand(len(x), -1, -1)], dim=1)
        for i, block in enumerate(vision.blocks):
            if 0 < i < len(visual_prompts):
                x = torch.cat([x[:, : -self.n_ctx], visual_prompts[i].expand(len(x), -1, -1)], dim=1)
            attn, mlp = backbones.residual_branches(block)
            update = _block_adapter(self.vision_adapters, i)(attn(x, **kwargs))
            x = x + (update if self.tda_attn is None else self.tda_attn[i](update, t))
            x = x + self.tda_mlp[i](mlp(x), t)
        frames = vision.pool(x[:, : -self.n_ctx])
        return F.normalize(frames.view(b, t, -1).mean(dim=1), dim=-1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        logits = self.encode_video(images) @ self.encode_text().T / self.temperature
        return {"emotion": logits}

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        ce = masked_cross_entropy(outputs["emotion"], class_targets(targets["emotion"], self.classes))
        return ce, {"loss_ce": float(ce.detach())}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """The authors' two groups: every adapter at `lr`, the prompt learner (MaPLe's context tokens
        and their projections) at `pe_clip_prompt_lr`."""
        prompts = [*self.text_prompts.parameters(), *self.prompt_proj.parameters()]
        ids = {id(p) for p in prompts}
        adapters = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"name": "adapters", "params": adapters, "lr": cfg.lr},
                {"name": "prompts", "params": prompts, "lr": self.prompt_lr}]


def _block_adapter(adapters: nn.ModuleList, i: int) -> nn.Module:
    """Block i's adapter: its own, or the single shared one."""
    return adapters[i] if len(adapters) > 1 else adapters[0]


@register("pe_clip", protocol="DFEW 5-fold (dvc: pe_clip@1..5) and FERV39K train/test (pe_clip_ferv39k); "
          "WAR and UAR", backbone="ViT-B-16", tasks=["emotion"],
          train_where="split = 'train' AND kind = 'clip'", val_where="split = 'val' AND kind = 'clip'",
          test_where="split = 'test' AND kind = 'clip'", optimizer="adamw", lr=2e-4, pe_clip_prompt_lr=3e-5,
          weight_decay=0.01, epochs=30, schedule="cosine", warmup_epochs=3, batch_size=4, frames=16,
          augment=["crop", "flip"], crop_scale=[0.08, 1.0], mixup=0.4, fmix=1.0, fmix_decay=3.0, mix_prob=0.7)
def build(cfg: TrainConfig) -> PeClip:
    return PeClip(cfg)
