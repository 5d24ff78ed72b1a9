"""PF-ViT (Li et al., "Emotion Separation and Recognition from a Facial Expression by Generating the
Poker Face with Vision Transformers"): an MAE-pre-trained ViT encoder, a token separator that splits
the tokens z into an emotional part v_e = M * z and a residue v_p = z - v_e, a linear emotion head on
v_e's class token, a generator (the MAE decoder behind a cross-fusion attention whose queries are the
MAE mask tokens) that reconstructs the face from z and draws the poker (emotionless) face from v_p,
and a composite discriminator (also made from the MAE decoder) with an output per emotion class (7,
or 8 with `emotion_classes: 8`) + 1 real/fake output, trained on its own optimiser
(`adversary_param_groups`, `adversary_loss`).

Weights come from the MAE run in `cfg.pretrained` (its folder or its best.pt; the run's config.json
beside it gives the architecture): encoder, decoder (generator) and a copy of the decoder's blocks
(discriminator). Without it everything is random and a WARNING says so.

At test time only encoder, separator and head run: in eval mode `forward` skips the generator and
the discriminator and returns just the emotion logits, and `loss` of those (validation) is the
cross-entropy alone.

Choices the paper leaves open (or that our text of it lost), recorded here:
- architecture: the MAE run's size; `cfg.backbone` and the effective image size must match it;
- separator: per-token SE-style adapter M = sigmoid(Linear(D, D/4) - GELU - Linear(D/4, D)) (the
  paper: SE block with GELU instead of ReLU; no pooling over tokens, the mask is token-wise). The
  class token is separated too, as the head reads v_e's class token;
- generator inputs: reconstruction from v_e + v_p, which is z exactly, so z is fed; poker face from
  v_p alone. Cross-fusion: queries are the mask token plus the decoder's position embeddings (one
  per position, class token's included), keys and values the decoder-embedded tokens plus positions;
  one pre-norm multi-head cross-attention with a residual on the queries, then the decoder's blocks,
  norm and pixel head. Outputs are pixels in the ImageNet-normalised input space (not MAE's per-patch
  normalised ones: a poker face may change a patch's brightness), so the pre-trained head adapts;
- discriminator: fresh linear patch embedding and class token, the decoder's fixed sin-cos positions,
  copies of the pre-trained decoder blocks and norm, a fresh Linear(decoder width, classes + 1) on the
  class token; sigmoid outputs (multi-label). It learns emotions from real images only (labelled
  ones; unlabelled rows, and contempt on a 7-way head, mask the emotion units) and real (1) vs fake
  (0) from all;
- adversarial loss of the generator (non-saturating): the discriminator should call the
  reconstruction "real, the input's emotion" and the poker face "real, neutral" (whatever the
  input's label). It is computed with the discriminator's parameters detached (`functional_call`),
  so the main backward leaves no gradient on them and only `adversary_loss` moves them;
- reconstruction loss: per-image mean squared pixel error of the reconstruction, plus that of the
  poker face for neutral-labelled inputs (emotion == 0), averaged over the batch;
- orthogonality (paper: the features of the images generated from v_e and from v_p, taken by a frozen
  pre-trained face-recognition network, kept orthogonal): a third generator pass draws the "emotion
  image" G(v_e); the recognition network (`pf_vit_face_model`, an ONNX file read by
  `fer_models.face_recognition`, e.g. an InceptionResnetV1 or ArcFace) embeds G(v_e) and the poker face
  G(v_p) from their pixels in 0..1; L_orth = mean |cos| of the two flattened features. On whenever a
  file is given; without one the term is absent (no such network ships with the project, and the
  paper's ablation shows the token-space version hurts, so none replaces it) and a WARNING says so.
  The network sits under `backbone.`, frozen and in eval mode, so checkpoints leave it out;
- loss weights: the paper balances the terms "approximately by their magnitudes" and gives no
  values. `pf_vit_balance = "magnitude"` (default): every term, CE included, is divided by the
  running mean of its own detached value (exponential, momentum `BALANCE_MOMENTUM`, started at the
  first training step's value), so each contributes about its weight (`pf_vit_rec_weight`,
  `pf_vit_adv_weight`, `pf_vit_orth_weight`, all 1; CE 1) whatever its scale; the running means are
  buffers, saved and resumed with the weights. `"fixed"`: total = CE + the weighted raw terms.
  The discriminator's loss is L_D(real) + L_D(fakes, detached), unweighted;
- recipe (registered, the paper's): Adam at 2e-5 without weight decay, batch 32, LR / 10 after 30
  epochs without validation improvement (`schedule: plateau`), at most 100 epochs, random scaling and
  horizontal flips; discriminator at `pf_vit_disc_lr` 1e-4 with `pf_vit_disc_betas` (0.5, 0.999) -
  its betas are not in our text of the paper - on the trainer's second optimiser (AdamW, no decay
  here as the recipe's weight decay is 0);
- figures: up to four faces; rows input / reconstruction / poker face, each named at its left.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fer_models.config import TrainConfig
from fer_models.face_recognition import load_face_recognizer, orthogonality_loss
from fer_models.losses import masked_bce, masked_cross_entropy
from fer_models.methods import Method, class_targets, num_classes
from fer_models.methods.mae import (FIGURE_FACES, MEAN, STD, Mae, MaeDecoder, decay_groups, encode, image_grid,
                                    patchify, prepare, unpatchify)
from fer_models.registry import register

log = logging.getLogger(__name__)
NEUTRAL = 0
SEPARATOR_REDUCTION = 4
BALANCE_MOMENTUM = 0.99
TERMS = ("ce", "rec", "adv", "orth")  # the generator-side loss terms, in the order of `loss_means`


def load_mae(cfg: TrainConfig) -> Mae:
    """The MAE whose weights PF-ViT starts from: `cfg.pretrained` (run folder or its best.pt), else random."""
    if not cfg.pretrained:
        log.warning("pf_vit: no MAE checkpoint given (pretrained); encoder, generator and discriminator "
                    "are randomly initialised")
        return Mae(cfg)
    path = Path(cfg.pretrained)
    weights = path / "best.pt" if path.is_dir() else path
    mae_cfg = TrainConfig(**json.loads((weights.parent / "config.json").read_text()))
    mae = Mae(mae_cfg)
    if (cfg.backbone, cfg.image_size or mae.size.image_size) != (mae_cfg.backbone, mae.image_size):
        raise ValueError(f"pf_vit: backbone {cfg.backbone!r} / image size {cfg.image_size} differ from the MAE "
                         f"run's {mae_cfg.backbone!r} / {mae.image_size} ({weights.parent})")
    mae.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    log.info("pf_vit: encoder and decoder from %s", weights)
    return mae


class TokenSeparator(nn.Module):
    """z -> (v_e, v_p) with v_e = sigmoid(adapter(z)) * z and v_p = z - v_e, token by token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.adapter = nn.Sequential(nn.Linear(dim, dim // SEPARATOR_REDUCTION), nn.GELU(),
                                     nn.Linear(dim // SEPARATOR_REDUCTION, dim))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        emotional = torch.sigmoid(self.adapter(z)) * z
        return emotional, z - emotional


class Generator(nn.Module):
    """Cross-fusion (mask-token queries over the given tokens) in front of the MAE decoder."""

    def __init__(self, decoder: MaeDecoder, heads: int) -> None:
        super().__init__()
        self.decoder = decoder
        dim = decoder.embed.out_features
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_fusion = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: Tensor) -> Tensor:
        """Encoder-width tokens [B, 1 + N, D] -> patch pixels [B, N, p * p * 3]."""
        d = self.decoder
        kv = self.norm_kv(d.embed(tokens) + d.pos_embed)
        q = (d.mask_token + d.pos_embed).expand(len(tokens), -1, -1)
        nq = self.norm_q(q)
        return d.run(q + self.cross_fusion(nq, kv, kv, need_weights=False)[0])


class Discriminator(nn.Module):
    """ViT over image patches with MAE-decoder blocks: one logit per emotion class + 1 real/fake logit."""

    def __init__(self, decoder: MaeDecoder, patch_size: int, classes: int) -> None:
        super().__init__()
        dim = decoder.embed.out_features
        self.patch_size = patch_size
        self.patch_embed = nn.Linear(patch_size ** 2 * 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer("pos_embed", decoder.pos_embed.clone())
        self.blocks = copy.deepcopy(decoder.blocks)
        self.norm = copy.deepcopy(decoder.norm)
        self.head = nn.Linear(dim, classes + 1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(patchify(images, self.patch_size))
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def discriminator_loss(logits: Tensor, emotion: Tensor | None, real: bool) -> Tensor:
    """BCE of the real/fake unit (the last), plus (when `emotion` is given) of the one-hot emotion units
    (the others) on rows with a label of the head (other rows: real/fake only)."""
    rf = F.binary_cross_entropy_with_logits(logits[:, -1].float(), torch.full_like(logits[:, -1].float(), float(real)))
    if emotion is None:
        return rf
    classes = logits.shape[1] - 1
    known = emotion >= 0
    onehot = F.one_hot(emotion.clamp(min=0), classes).float()
    return rf + masked_bce(logits[:, :classes].float(), onehot, known)


class PfVit(Method):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.tasks = ["emotion"]
        mae = load_mae(cfg)
        self.size, self.image_size = mae.size, mae.image_size
        self.encoder = mae.encoder
        self.separator = TokenSeparator(self.size.width)
        self.classes = num_classes(cfg, "emotion")
        self.classifier = nn.Linear(self.size.width, self.classes)
        self.discriminator = Discriminator(mae.decoder, self.size.patch_size, self.classes)
        self.generator = Generator(mae.decoder, self.size.decoder_heads)
        self.weights = {"ce": 1.0, "rec": cfg.pf_vit_rec_weight, "adv": cfg.pf_vit_adv_weight,
                        "orth": cfg.pf_vit_orth_weight}
        self.balance = cfg.pf_vit_balance
        # running means of each term's value (magnitude balancing); 0 = not started
        self.register_buffer("loss_means", torch.zeros(len(TERMS)))
        if cfg.pf_vit_face_model:  # frozen, under `backbone.`: the trainer's checkpoints leave it out
            self.backbone = load_face_recognizer(cfg.pf_vit_face_model)
            log.info("pf_vit: orthogonality loss through the face-recognition network %s", cfg.pf_vit_face_model)
        else:
            self.backbone = None
            log.warning("pf_vit: no face-recognition network given (pf_vit_face_model); the orthogonality "
                        "loss is left out")

    def _generate(self, z: Tensor, *parts: Tensor) -> tuple[Tensor, ...]:
        """Normalised images the generator draws from z (the reconstruction, v_e + v_p = z) and each of `parts`."""
        faces = unpatchify(self.generator(torch.cat([z, *parts])), self.size.patch_size)
        return faces.chunk(1 + len(parts))

    def _identity(self, images: Tensor) -> Tensor:
        """Face-recognition features of normalised images, from their pixels in 0..1."""
        mean, std = images.new_tensor(MEAN).view(1, 3, 1, 1), images.new_tensor(STD).view(1, 3, 1, 1)
        return self.backbone(images * std + mean)

    def _fixed_discriminator(self, images: Tensor) -> Tensor:
        """The discriminator with its parameters detached: gradients reach the images only."""
        params = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (images,))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = prepare(images, self.image_size)
        z = encode(self.encoder, x)
        emotional, residue = self.separator(z)
        out = {"emotion": self.classifier(emotional[:, 0])}
        if not self.training:  # test time: encoder, separator and head only
            return out
        if self.backbone is None:
            recon, poker = self._generate(z, residue)
        else:  # the emotion image G(v_e) too, for the orthogonality loss
            recon, poker, emotion_face = self._generate(z, residue, emotional)
            out.update(id_emotion=self._identity(emotion_face), id_poker=self._identity(poker))
        out.update(image=x, recon=recon, poker=poker, d_fake=self._fixed_discriminator(torch.cat([recon, poker])))
        return out

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        y = class_targets(targets["emotion"], self.classes)
        ce = masked_cross_entropy(outputs["emotion"].float(), y)
        if "recon" not in outputs:  # eval mode ran no generator: the validation loss is the FER loss
            return ce, {"loss_ce": float(ce.detach())}
        x = outputs["image"]
        recon_err = ((outputs["recon"].float() - x) ** 2).mean(dim=(1, 2, 3))
        poker_err = ((outputs["poker"].float() - x) ** 2).mean(dim=(1, 2, 3))
        rec = (recon_err + (y == NEUTRAL).float() * poker_err).mean()
        d_recon, d_poker = outputs["d_fake"].chunk(2)
        adv = discriminator_loss(d_recon, y, real=True) + discriminator_loss(d_poker, torch.zeros_like(y), real=True)
        terms = {"ce": ce, "rec": rec, "adv": adv}
        if "id_emotion" in outputs:
            terms["orth"] = orthogonality_loss(outputs["id_emotion"], outputs["id_poker"])
        return self._total(terms), {f"loss_{name}": float(value.detach()) for name, value in terms.items()}

    def _total(self, terms: dict[str, Tensor]) -> Tensor:
        """The weighted sum of the terms; with magnitude balancing each is first divided by its running
        mean (updated here, from this training step's values), so each weighs about its weight."""
        if self.balance == "fixed":
            return sum(self.weights[name] * value for name, value in terms.items())
        total = 0.0
        for name, value in terms.items():
            i = TERMS.index(name)
            with torch.no_grad():
                current = value.detach().float()
                started = self.loss_means[i] > 0
                self.loss_means[i] = torch.where(started, BALANCE_MOMENTUM * self.loss_means[i]
                                                 + (1 - BALANCE_MOMENTUM) * current, current)
            total = total + self.weights[name] * value / self.loss_means[i].clamp(min=1e-6)
        return total

    def adversary_param_groups(self, cfg: TrainConfig) -> list[dict]:
        return [{"name": "discriminator", "params": [p for p in self.discriminator.parameters() if p.requires_grad],
                 "lr": cfg.pf_vit_disc_lr, "betas": tuple(cfg.pf_vit_disc_betas)}]

    def adversary_loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        y = class_targets(targets["emotion"], self.classes)
        real = discriminator_loss(self.discriminator(outputs["image"]), y, real=True)
        fakes = torch.cat([outputs["recon"], outputs["poker"]]).detach()
        fake = discriminator_loss(self.discriminator(fakes), None, real=False)
        return real + fake, {"loss_d_real": float(real.detach()), "loss_d_fake": float(fake.detach())}

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        return decay_groups(self, cfg.lr, skip={id(p) for p in self.discriminator.parameters()})

    @torch.no_grad()
    def figures(self, images: Tensor) -> dict[str, np.ndarray]:
        was_training = self.training
        self.eval()
        x = prepare(images[:FIGURE_FACES], self.image_size)
        z = encode(self.encoder, x)
        recon, poker = self._generate(z, self.separator(z)[1])
        self.train(was_training)
        return {"pf_vit_poker_faces": image_grid([x, recon, poker], ["input", "reconstruction", "poker face"])}


@register("pf_vit", protocol="RAF-DB, AffectNet-7/8 and FERPlus test sets after training on each training "
          "set; accuracy", backbone="mae-vit-base-16", tasks=["emotion"], optimizer="adam", lr=2e-5,
          weight_decay=0.0, pf_vit_disc_lr=1e-4, batch_size=32, epochs=100, schedule="plateau",
          plateau_patience=30, plateau_factor=0.1, warmup_epochs=0, augment=["scale", "flip"])
def build(cfg: TrainConfig) -> PfVit:
    return PfVit(cfg)
