"""MoME: text-prompted 3-D CT segmentation with a mixture of decoder-scale experts.

    CT patch (B, 1, D, H, W) -> backbone (backbone.kind: SwinUNETR by default, or SegResNet)
        -> decoder outputs (pyramid levels, finest first) + bottleneck
    expert s: conv block on level s -> c_e channels -> trilinear to the fusion resolution
    prompt k -> text tower -> t_k (cached for the model's class set; new prompts embedded on the fly)
    router: g_{k,s}(x) = softmax_s(<v(x), W_s t_k> / sqrt(d))
    fusion: F_k(x) = sum_s g_{k,s}(x) E_s(x)
    head:   controller([GAP(bottleneck); ReLU(Linear(t_k))]) -> 3 grouped 1x1x1 convs -> logit_k

Only the prompted classes are computed, all K of them and all B samples in one batched pass; router, fusion
and heads act voxel by voxel, so they run on chunks of voxels: chunks within a memory budget on every
device (recomputed in the backward when the patch exceeds it), and on the CPU smaller chunks that stay in
cache.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medmoe.backbones import build_backbone
from medmoe.errors import InvalidInputError
from medmoe.moe import SoftUsage, soft_load_balance_loss
from medmoe.saved_model import PretrainedMixin
from medmoe.seg.classes import ClassTemplate
from medmoe.seg.config import MoMEConfig
from medmoe.seg.experts import ScaleExperts, upsample_trilinear
from medmoe.seg.heads import DynamicHeads
from medmoe.seg.router import ScaleRouter
from medmoe.text.tower import TextTower
from medmoe.weights.prompt_embeddings import PromptTable, read_prompt_embeddings

log = logging.getLogger(__name__)

_PROMPT_START = "a computerized tomography"


def _check_config(config: MoMEConfig) -> None:
    if config.fusion_scale not in (1, 2):
        raise InvalidInputError(f"fusion_scale must be 1 (full resolution) or 2 (half), got {config.fusion_scale}")
    for name in ("expert_channels", "router_dim", "head_hidden", "text_proj_dim", "in_channels"):
        if getattr(config, name) < 1:
            raise InvalidInputError(f"{name} must be >= 1, got {getattr(config, name)}")
    if len(config.roi_size) != 3:
        raise InvalidInputError(f"roi_size must be 3 sizes (D, H, W), got {tuple(config.roi_size)}")


def fuse_scales(gates: Tensor, experts: list[Tensor]) -> Tensor:
    """F_k(x) = sum_s g_{k,s}(x) E_s(x) for every class at once.

    Args:
        gates: (B, K, S, X); experts: S tensors (B, C, X).

    Returns:
        (B, K, C, X). One in-place multiply-add per scale over the (B, K, C, X) result: on CPU 6x faster
        forward and 2x faster forward + backward than per-voxel (K, S) @ (S, C) matmuls (measured at
        96^3, K = 13, S = 5, C = 8).
    """
    fused = gates[:, :, 0, None] * experts[0][:, None]
    for s in range(1, len(experts)):
        fused.addcmul_(gates[:, :, s, None], experts[s][:, None])
    return fused


def _device_index(values: list[int], device: torch.device) -> Tensor:
    """A long tensor of ``values`` on ``device``. To a GPU it is copied from pinned memory without blocking:
    a blocking host-to-GPU copy waits until the GPU has run all the work queued before it."""
    index = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


class MoME(nn.Module, PretrainedMixin):
    """Mixture of decoder-scale experts routed by class prompts, on a 3-D backbone (``config.backbone.kind``:
    MONAI's SwinUNETR by default).

    Args:
        config: :class:`MoMEConfig`.
        load_pretrained: load the pretrained weights the config names (text tower, backbone weight files;
            False: random, as before loading a saved model).

    Example:
        >>> model = medmoe.create_model("mome-nano")
        >>> logits = model(torch.zeros(1, 1, 32, 32, 32), prompts=["liver", "spleen"])  # (1, 2, 32, 32, 32)
        >>> emb = model.embed_prompts(["liver", "spleen"])
        >>> logits = sliding_window_inference(ct, (32, 32, 32), 4, model, text_emb=emb)
    """

    config_class = MoMEConfig
    model_type = "mome"
    description = "MoME segmentation"
    trained_settings = ("backbone.use_checkpoint", "backbone.drop_path_rate", "text.freeze")

    def __init__(self, config: MoMEConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        _check_config(config)
        self.template = ClassTemplate.default()
        table = read_prompt_embeddings(config.prompt_embeddings) if config.prompt_embeddings and load_pretrained else None
        classes = list(config.classes) or (self._table_classes(table) if table else list(self.template.names))
        unknown = [c for c in classes if c not in self.template]
        if unknown:
            raise InvalidInputError(f"config.classes: {unknown} are not class template names (see ClassTemplate.names)")
        self.config = dataclasses.replace(config, classes=tuple(classes))
        self.backbone = build_backbone(config.backbone, in_channels=config.in_channels,
                                       load_pretrained=load_pretrained)
        try:
            self.backbone.check_size(*config.roi_size)
        except InvalidInputError as err:
            raise InvalidInputError(f"roi_size {tuple(config.roi_size)}: {err}") from None
        # what the backbone's weight files filled (logged; empty when none or not load_pretrained)
        self.weight_reports = list(getattr(self.backbone, "weight_reports", []))
        self.text = TextTower(config.text, load_pretrained=load_pretrained)
        text_dim = self.text.width
        info = self.backbone.feature_info
        self.experts = ScaleExperts(info.channels, config.expert_channels)
        voxel_channels = info.channels[info.level(config.fusion_scale)]
        self.router = ScaleRouter(voxel_channels, text_dim, len(info), config.router_dim)
        self.heads = DynamicHeads(info.pooled_channels, text_dim, config.expert_channels,
                                  config.head_hidden, config.text_proj_dim)
        # memory budget of the per-voxel stage (router, fusion, heads) on every device, as elements of the
        # (B, K, C, chunk) fused tensor of one chunk of voxels (None: no budget). A patch above it runs in chunks
        # of this size and, with gradients on, recomputes each chunk's forward in the backward, so autograd holds
        # one chunk's intermediates instead of the patch's (82 bytes per sample, class and voxel under bf16).
        # mome-swinunetr, 96^3, K = 117, B = 2: 21 GB in one pass, 1.7 GB in 25 chunks of 2^26 (estimated); a
        # CPU training step at 64^3 with full-resolution fusion: peak 5.7 GB in one pass, 1.9 GB chunked
        # (measured, docs/seg.md).
        self.chunk_elements: int | None = 1 << 26
        # voxels per chunk of the per-voxel stage on one CPU thread, as elements of a (B, K, C, chunk) tensor: the
        # chunk's per-class tensors stay in cache (None: only the memory budget chunks). With more
        # threads chunks are 4x larger: every multi-threaded op waits for its slowest thread, so many small ops
        # lose on a shared machine, while very large chunks leave the cache (MoME / SwinUNETR forward, 96^3,
        # K = 13, F = 24, 2 threads on a quiet 2-core machine: 2^19-element chunks 1.11, 2^21 1.11, 2^23 1.19;
        # on a loaded machine, what MoME adds: 2^19 8-14 s, 2^23 3.1-3.6 s, the whole patch 3.7-3.9 s; one
        # thread: 1.4, 2.2, 2.6-2.9 s).
        self.cpu_chunk_elements: int | None = 1 << 19
        self.class_names: tuple[str, ...] = tuple(classes)
        self._class_index = {name: i for i, name in enumerate(classes)}
        with torch.no_grad():
            if table is not None:
                raw = self._table_rows(table, classes)
            elif any(p.is_meta for p in self.text.parameters()):
                # built on the meta device (medmoe.model_checks.expected_shapes): shapes only, nothing to encode
                raw = torch.empty(len(classes), text_dim, device="meta")
            else:
                raw = self._encode_raw([self.template.prompt(name) for name in classes])
        center = raw.mean(dim=0) if config.center_text else torch.zeros_like(raw[0])
        # persistent: a saved model reloads the very embeddings (and centre) it was trained with
        self.register_buffer("text_center", center)
        self.register_buffer("class_embeddings", self._finish_text(raw))

    # ------------------------------------------------------------------ prompts
    @property
    def num_scales(self) -> int:
        return self.experts.num_experts

    @property
    def may_leave_parameters_unused(self) -> bool:
        """Whether a training step can leave a trainable parameter without a gradient (DDP's
        ``find_unused_parameters``, see :func:`medmoe.train.distributed.may_leave_parameters_unused`).

        Every scale expert runs on its pyramid level and is gated softly for every prompted class, and the
        heads read the bottleneck and are generated per class, so the whole network (whatever the backbone)
        takes part in every step; only a text tower that trains whole leaves its pooler unused.
        """
        return self.config.text.freeze == "none"

    @property
    def compile_targets(self) -> list[nn.Module]:
        """What ``--compile`` compiles: the backbone and the scale experts (tensor-only, fixed shapes). The
        forward reads prompt strings, so a whole-model graph would be recompiled per set of classes."""
        return [self.backbone, self.experts]

    @property
    def text_dim(self) -> int:
        return self.text.width

    def _encode_raw(self, texts: list[str]) -> Tensor:
        emb = self.text(texts).sentence
        return F.normalize(emb, dim=-1) if self.config.normalize_text else emb

    def _table_classes(self, table: PromptTable) -> list[str]:
        """The template classes of a prompt-embedding file's rows (the class set when config.classes is empty)."""
        names = [self.template.resolve(c) for c in table.classes]
        unknown = [c for c, n in zip(table.classes, names) if n is None]
        if unknown:
            log.warning("%s: rows %s are not class template names; they are left out", table.source, unknown)
        if len(unknown) == len(names):
            raise InvalidInputError(f"{table.source}: no row is a class template name ({list(table.classes)[:5]})")
        return list(dict.fromkeys(n for n in names if n is not None))

    def _table_rows(self, table: PromptTable, classes: list[str]) -> Tensor:
        """Raw (K, T) embeddings of ``classes`` read from a prompt-embedding file instead of the text tower."""
        table.check_width(self.text_dim)
        rows = table.rows(classes, resolve=self.template.resolve)
        return F.normalize(rows, dim=-1) if self.config.normalize_text else rows

    def _finish_text(self, raw: Tensor) -> Tensor:
        if not self.config.center_text:
            return raw
        centered = raw - self.text_center.to(raw.dtype)
        return F.normalize(centered, dim=-1) if self.config.normalize_text else centered

    def resolve_prompts(self, prompts: list[str]) -> list[str | None]:
        """Canonical class of each prompt (synonyms and typos resolved), None for an unknown class."""
        self._check_prompts(prompts)
        return [self.template.resolve(p) for p in prompts]

    @staticmethod
    def _check_prompts(prompts) -> None:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise InvalidInputError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise InvalidInputError("prompts is empty: give at least one class to segment, e.g. ['liver']")
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise InvalidInputError(f"prompts must be non-empty strings, got {bad!r}")

    def embed_prompts(self, prompts: list[str]) -> Tensor:
        """(K, T) embeddings of K class prompts, on the model's device.

        A name, synonym or typo of a class in the model's class set reads the cached embedding (when the text
        tower is frozen). A template class outside the set is embedded from its template prompt. Anything else
        is an **unseen class**: its text is embedded on the fly (wrapped in the prompt template unless it
        already is a full prompt) and a warning is logged, since the heads never saw that embedding in
        training and the mask is only as good as its nearness to known classes in text space.
        """
        names = self.resolve_prompts(prompts)
        use_cache = self.text.frozen or bool(self.config.prompt_embeddings)
        rows: list[int] = []
        fresh: list[str] = []
        for prompt, name in zip(prompts, names):
            if name is not None and use_cache and name in self._class_index:
                rows.append(self._class_index[name])
                continue
            if self.config.prompt_embeddings:
                raise InvalidInputError(
                    f"prompt {prompt!r} has no row in the prompt embeddings {self.config.prompt_embeddings} "
                    f"(classes: {list(self.class_names)}); the text tower is not used for them")
            if name is None:
                log.warning("prompt %r matches no class of the template; embedding it on the fly as an unseen "
                            "class (the heads were not trained on it)", prompt)
                text = prompt.strip() if prompt.strip().lower().startswith(_PROMPT_START) else self.template.prompt(prompt)
            else:
                text = self.template.prompt(name)
            rows.append(len(self.class_names) + len(fresh))  # a row appended to the table below
            fresh.append(text)
        table = self.class_embeddings
        if fresh:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not use_cache):
                table = torch.cat([table, self._finish_text(self._encode_raw(fresh)).to(table.dtype)], dim=0)
        return table.index_select(0, _device_index(rows, table.device))

    # ------------------------------------------------------------------ forward
    def _check_volume(self, volume: Tensor) -> None:
        if not isinstance(volume, Tensor):
            raise InvalidInputError(f"volume must be a torch.Tensor (B, C, D, H, W), got {type(volume).__name__}")
        if volume.ndim != 5:
            raise InvalidInputError(
                f"volume must be 5-D (B, {self.config.in_channels}, D, H, W), got shape {tuple(volume.shape)}; "
                "MoME segments 3-D CT volumes (add batch and channel axes; a 2-D image is not supported)")
        if volume.shape[1] != self.config.in_channels:
            raise InvalidInputError(
                f"volume has {volume.shape[1]} channels, expected {self.config.in_channels} (shape {tuple(volume.shape)})")
        try:
            self.backbone.check_size(*volume.shape[2:])
        except InvalidInputError as err:
            raise InvalidInputError(
                f"{err}; pad it or use sliding_window_inference with roi_size={tuple(self.config.roi_size)}") from None

    def _text(self, prompts: list[str] | None, text_emb: Tensor | None, like: Tensor) -> Tensor:
        if (prompts is None) == (text_emb is None):
            raise InvalidInputError("give exactly one of prompts=[...] or text_emb=(K, T) tensor")
        if prompts is not None:
            text_emb = self.embed_prompts(prompts)
        if not isinstance(text_emb, Tensor) or text_emb.ndim != 2 or text_emb.shape[1] != self.text_dim:
            shape = tuple(text_emb.shape) if isinstance(text_emb, Tensor) else type(text_emb).__name__
            raise InvalidInputError(f"text_emb must be (K, {self.text_dim}), got {shape}")
        if text_emb.shape[0] == 0:
            raise InvalidInputError("text_emb holds no class (K = 0); give at least one prompt")
        return text_emb.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)

    def forward_outputs(self, volume: Tensor, prompts: list[str] | None = None, *, text_emb: Tensor | None = None,
                        return_gates: bool = False) -> dict[str, Tensor]:
        """Logits and routing outputs.

        Args:
            volume: (B, C, D, H, W), D, H, W multiples of 32.
            prompts: K class names or prompts; or
            text_emb: (K, T) prompt embeddings from :meth:`embed_prompts`.
            return_gates: also return the (B, K, S, d, h, w) gates (memory: K*S floats per voxel).

        Returns:
            ``logits`` (B, K, D, H, W); ``gate_usage`` (S,) mean gate per scale, in the pyramid's level order
            (finest first, as ``gates``); ``balance_loss`` () soft balance of the scales (1 = uniform);
            ``gates`` if asked.
        """
        self._check_volume(volume)
        text = self._text(prompts, text_emb, volume)
        if self.config.scale_text and self.config.normalize_text:
            text = text * math.sqrt(self.text_dim)
        pyramid = self.backbone(volume)
        scale = self.config.fusion_scale
        size = tuple(s // scale for s in volume.shape[2:])
        experts = [e.flatten(2) for e in self.experts(pyramid.features, size)]  # S x (B, C, X), finest first
        voxel = pyramid.features[self.backbone.feature_info.level(scale)].flatten(2)  # (B, C_v, X)
        queries = self.router.queries(text)
        layers = self.heads.layers(self.heads.head_params(pyramid.bottleneck, text))
        (b, c, n_voxels), k = experts[0].shape, text.shape[0]
        step, recompute = self._voxel_chunking(volume.device, b * k * c, n_voxels)
        stage = (functools.partial(checkpoint, self._voxel_stage, use_reentrant=False, preserve_rng_state=False)
                 if recompute else self._voxel_stage)
        logits, gates, usage = [], [], SoftUsage(expert_dim=2)  # the scales are the experts
        for start in range(0, n_voxels, step):
            chunk = slice(start, start + step)
            chunk_logits, g = stage(queries, layers, voxel[..., chunk], [e[..., chunk] for e in experts])
            logits.append(chunk_logits)  # (B, K, n)
            usage.update(g)  # (B, K, S, n) fp32: a sum, which keeps nothing of g for the backward
            if return_gates:
                gates.append(g)
        logits = (torch.cat(logits, dim=-1) if len(logits) > 1 else logits[0]).view(b, k, *size)
        if scale != 1:
            logits = upsample_trilinear(logits, tuple(volume.shape[2:]))
        usage = usage.usage()  # (S,) mean gate per scale, finest first
        out = {"logits": logits, "gate_usage": usage, "balance_loss": soft_load_balance_loss(usage)}
        if return_gates:
            out["gates"] = torch.cat(gates, dim=-1).view(b, k, self.num_scales, *size)
        return out

    def _voxel_stage(self, queries: tuple[Tensor, Tensor], layers: list[tuple[Tensor, Tensor]], voxel: Tensor,
                     experts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Router, fusion and heads on n voxels: (B, K, n) logits and the (B, K, S, n) float32 gates."""
        g = self.router.gates(queries, voxel)
        fused = fuse_scales(g.to(experts[0].dtype), experts)  # (B, K, C, n)
        return self.heads.run(layers, fused), g

    def _voxel_chunking(self, device: torch.device, per_voxel: int, n_voxels: int) -> tuple[int, bool]:
        """Voxels per chunk of the per-voxel stage, and whether each chunk's forward is recomputed in the
        backward (gradients on and the patch above :attr:`chunk_elements`).

        Args:
            device: where the stage runs (the CPU adds its cache-sized chunks, :attr:`cpu_chunk_elements`).
            per_voxel: elements of the fused (B, K, C, n) tensor per voxel, B * K * C.
            n_voxels: voxels of the patch at the fusion resolution.
        """
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return n_voxels, False  # a traced graph is one pass: chunking changes memory and speed, not values
        limits = [self.chunk_elements] if self.chunk_elements else []
        if device.type == "cpu" and self.cpu_chunk_elements:
            limits.append(self.cpu_chunk_elements * (1 if torch.get_num_threads() == 1 else 4))
        if not limits:
            return n_voxels, False
        over_budget = bool(self.chunk_elements) and per_voxel * n_voxels > self.chunk_elements
        return min(n_voxels, max(1, min(limits) // per_voxel)), over_budget and torch.is_grad_enabled()

    def example_inputs(self, *, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments of a forward on the backbone's smallest input: one random volume and two class
        prompts (for smoke tests: ``model(**model.example_inputs())``)."""
        g = torch.Generator().manual_seed(seed)
        volume = torch.rand(1, self.config.in_channels, *self.backbone.smallest_size(), generator=g)
        return {"volume": volume, "prompts": ["liver", "spleen"]}

    def forward(self, volume: Tensor, prompts: list[str] | None = None, *, text_emb: Tensor | None = None,
                return_dict: bool = False) -> Tensor | dict[str, Tensor]:
        """(B, K, D, H, W) logits of K prompted classes (sigmoid -> probability).

        ``return_dict=True`` gives :meth:`forward_outputs`' dict instead (a trainer calls the DDP-wrapped
        model this way so that gradients synchronise).
        """
        out = self.forward_outputs(volume, prompts, text_emb=text_emb)
        return out if return_dict else out["logits"]
