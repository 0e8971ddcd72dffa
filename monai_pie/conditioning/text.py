"""Text prompts (``"A chest X-ray image, cardiomegaly, edema"``) -> cross-attention context, for text-guided LDMs.

Two conditioners, both following the contract of :class:`~monai_pie.networks.LatentDiffusionModel`:
``conditioner(prompts) -> DiffusionCondition(context=(B, L, D))``, ``conditioner.null_condition(condition)`` with a
context of the same ``(B, L, D)`` shape (classifier-free guidance and condition dropout), and ``embed_dim``.

* :class:`FindingsTextEncoder`: built in, no pretrained weights. Parses PIE-style prompts against a fixed findings
  vocabulary and gives one learned slot per finding (present / absent), so the prompt's order does not matter.
* :class:`PretrainedTextEncoder`: a local Hugging Face text encoder (frozen by default, RoentGen style) followed by
  a trainable linear "textual projection" to the U-Net's ``cross_attention_dim``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..vocabulary import FINDINGS, MODALITY_PREFIXES, NO_FINDING, SYNONYMS, normalize_term
from .condition import DiffusionCondition

__all__ = [
    "FindingsTextEncoder",
    "PretrainedTextEncoder",
]

class FindingsTextEncoder(nn.Module):
    """Parse PIE prompts into a fixed-length ``(B, 1 + V, embed_dim)`` context of learned slot embeddings.

    A prompt is ``"<modality prefix>, <finding>, <finding>, ..."``, e.g. ``"A chest X-ray image, cardiomegaly,
    pleural effusion"``; ``"<prefix>, no finding"`` or the bare ``"<prefix>"`` means no findings. Matching is case
    insensitive and whitespace normalised; findings may repeat and come in any order, and simple synonyms are
    accepted (``"effusion"``, ``"pulmonary edema"``, ``"enlarged heart"``, ``"ad"``, ``"mci"``, ...).

    Context layout, ``L = 1 + V`` for ``V`` vocabulary findings (no padding, order free):

    * slot 0: the learned embedding of the prompt's modality;
    * slot ``1 + i``: the learned ``present[i]`` embedding if finding ``i`` is named, else ``absent[i]``;

    plus a learned per-slot position embedding. A separate learned ``(L, D)`` null context stands for "no prompt"
    (classifier-free guidance, condition dropout).

    Args:
        findings: the vocabulary, in the canonical order used for slots and by :meth:`prompt_for`.
        modalities: ``{prompt prefix: modality name}``; several prefixes may share a modality name.
        embed_dim: context width ``D`` (the U-Net's ``cross_attention_dim``).
        no_finding: the term that means "no findings".
        synonyms: ``{variant: vocabulary term}``; entries whose term is not in ``findings`` are ignored.

    Example::

        enc = FindingsTextEncoder(embed_dim=64)
        enc(["A chest X-ray image, edema, cardiomegaly", "A brain MRI image, AD"]).context   # (2, 7, 64)
        enc.parse("a chest x-ray image,  effusion")   # ("chest x-ray", ("pleural effusion",))
    """

    def __init__(
        self,
        findings: Sequence[str] = FINDINGS,
        modalities: Mapping[str, str] = MODALITY_PREFIXES,
        embed_dim: int = 64,
        no_finding: str = NO_FINDING,
        synonyms: Mapping[str, str] | None = SYNONYMS,
    ) -> None:
        super().__init__()
        if isinstance(findings, str) or not findings:
            raise ValueError("`findings` must be a non-empty sequence of finding names.")
        self.findings = tuple(normalize_term(f) for f in findings)
        if any(not f for f in self.findings):
            raise ValueError(f"`findings` contains an empty name: {list(findings)}.")
        if len(set(self.findings)) != len(self.findings):
            raise ValueError(f"`findings` contains duplicates after normalisation: {list(self.findings)}.")
        if any("," in f for f in self.findings):
            raise ValueError(f"finding names must not contain commas (they separate findings): {list(self.findings)}.")
        self.no_finding = normalize_term(no_finding)
        if not self.no_finding or self.no_finding in self.findings:
            raise ValueError(f"`no_finding` must be a non-empty term outside `findings`, got {no_finding!r}.")
        if not isinstance(modalities, Mapping) or not modalities:
            raise ValueError("`modalities` must be a non-empty mapping {prompt prefix: modality name}.")
        self.prefixes: dict[str, str] = {}  # normalised prefix -> modality name
        self._display_prefix: dict[str, str] = {}  # modality name -> prefix as given (first one wins)
        for prefix, name in modalities.items():
            key, name = normalize_term(prefix), normalize_term(name)
            if not key or not name:
                raise ValueError(f"`modalities` has an empty prefix or name: {dict(modalities)}.")
            if "," in key:
                raise ValueError(f"modality prefix {prefix!r} must not contain a comma (commas separate findings).")
            if key in self.prefixes:
                raise ValueError(f"`modalities` has the prefix {prefix!r} twice (after normalisation).")
            self.prefixes[key] = name
            self._display_prefix.setdefault(name, " ".join(str(prefix).split()))
        self.modality_names: tuple[str, ...] = tuple(self._display_prefix)
        self.synonyms = {normalize_term(k): normalize_term(v) for k, v in (synonyms or {}).items()}
        self.synonyms = {k: v for k, v in self.synonyms.items() if v in self.findings and k not in self.findings}
        self.embed_dim = int(embed_dim)
        if self.embed_dim < 1:
            raise ValueError(f"`embed_dim` must be a positive integer, got {embed_dim!r}.")

        v, d = len(self.findings), self.embed_dim
        self.modality_embed = nn.Parameter(torch.randn(len(self.modality_names), d))
        self.present = nn.Parameter(torch.randn(v, d))
        self.absent = nn.Parameter(torch.randn(v, d))
        self.position = nn.Parameter(0.02 * torch.randn(1 + v, d))
        self.null_context = nn.Parameter(torch.randn(1 + v, d))

    @property
    def context_length(self) -> int:
        """``L = 1 + V``: one modality slot plus one slot per vocabulary finding."""
        return 1 + len(self.findings)

    # ---------------------------------------------------------------- text
    def canonical(self, term: str) -> str:
        """Vocabulary spelling of a finding or synonym (case and whitespace insensitive); ``ValueError`` if unknown."""
        norm = normalize_term(term)
        norm = self.synonyms.get(norm, norm)
        if norm not in self.findings:
            hint = f"; synonyms: {sorted(self.synonyms)}" if self.synonyms else ""
            raise ValueError(
                f"unknown finding {term!r}; expected one of {list(self.findings)} or {self.no_finding!r}{hint}."
            )
        return norm

    def modality_of(self, modality: str) -> str:
        """Modality name for a modality name or a prompt prefix; ``ValueError`` if neither is known."""
        norm = normalize_term(modality)
        if norm in self.modality_names:
            return norm
        if norm in self.prefixes:
            return self.prefixes[norm]
        raise ValueError(
            f"unknown modality {modality!r}; expected one of {list(self.modality_names)} "
            f"or a prompt prefix from {list(self._display_prefix.values())}."
        )

    def parse(self, prompt: str) -> tuple[str, tuple[str, ...]]:
        """``prompt`` -> ``(modality name, findings)``, findings de-duplicated and in vocabulary order.

        Raises:
            TypeError: if ``prompt`` is not a string.
            ValueError: for an empty prompt, an unknown modality prefix, an unknown or empty finding, or
                ``no_finding`` combined with findings.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}.")
        if not prompt.strip():
            raise ValueError(
                f"empty prompt; expected '<prefix>, <finding>, ...' with a prefix from "
                f"{list(self._display_prefix.values())}."
            )
        head, *terms = prompt.split(",")
        key = normalize_term(head)
        if key not in self.prefixes:
            raise ValueError(
                f"prompt {prompt!r} does not start with a known modality prefix; expected one of "
                f"{list(self._display_prefix.values())} followed by comma-separated findings."
            )
        named: set[str] = set()
        saw_no_finding = False
        for term in terms:
            norm = normalize_term(term)
            if not norm:
                raise ValueError(f"prompt {prompt!r} has an empty finding between commas.")
            if norm in (self.no_finding, self.no_finding + "s"):
                saw_no_finding = True
                continue
            named.add(self.canonical(norm))
        if saw_no_finding and named:
            raise ValueError(
                f"prompt {prompt!r} combines {self.no_finding!r} with findings {sorted(named)}; use one or the other."
            )
        return self.prefixes[key], tuple(f for f in self.findings if f in named)

    def prompt_for(self, modality: str, findings: Iterable[str] = ()) -> str:
        """Canonical prompt: ``"<prefix>, <findings in vocabulary order>"`` or ``"<prefix>, no finding"``.

        ``modality`` is a modality name (``"chest x-ray"``) or a prompt prefix; findings may be synonyms.
        """
        name = self.modality_of(modality)
        if isinstance(findings, str):
            findings = [findings]
        wanted = {self.canonical(f) for f in findings}
        present = [f for f in self.findings if f in wanted]
        return ", ".join([self._display_prefix[name], *(present or [self.no_finding])])

    # ---------------------------------------------------------------- embeddings
    def labels_for(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(modality_index (B,) long, labels (B, V) float 0/1)`` on the module's device."""
        prompts = self._as_list(prompts)
        parsed = [self.parse(p) for p in prompts]
        device = self.present.device
        index = torch.tensor([self.modality_names.index(m) for m, _ in parsed], dtype=torch.long, device=device)
        labels = torch.tensor(
            [[float(f in found) for f in self.findings] for _, found in parsed], dtype=torch.float32, device=device
        )
        return index, labels

    def encode_labels(self, modality_index: Any, labels: Any) -> torch.Tensor:
        """Modality indices ``(B,)`` (into ``modality_names``) and labels ``(B, V)`` in [0, 1] -> context ``(B, L, D)``.

        Labels are normally 0/1; a value in between interpolates linearly between ``absent`` and ``present``.
        """
        device, dtype = self.present.device, self.present.dtype
        index = torch.as_tensor(modality_index, device=device).reshape(-1)
        if index.is_floating_point() or index.dtype == torch.bool:
            raise ValueError(f"`modality_index` must hold integers, got dtype {index.dtype}.")
        index = index.long()
        m = len(self.modality_names)
        if index.numel() and (index.min() < 0 or index.max() >= m):
            raise ValueError(f"`modality_index` must be in [0, {m - 1}] for modalities {list(self.modality_names)}.")
        y = torch.as_tensor(labels, device=device).to(dtype)
        if y.ndim == 1:
            y = y[None]
        v = len(self.findings)
        if y.ndim != 2 or y.shape[1] != v:
            raise ValueError(
                f"`labels` must have shape (B, {v}) for findings {list(self.findings)}, got {tuple(y.shape)}."
            )
        if y.shape[0] != index.shape[0]:
            raise ValueError(f"`modality_index` has {index.shape[0]} rows but `labels` has {y.shape[0]}.")
        if not torch.isfinite(y).all() or y.min() < 0 or y.max() > 1:
            raise ValueError("`labels` must be finite and in [0, 1] (1 = finding present).")
        y = y[..., None]
        slots = y * self.present + (1.0 - y) * self.absent  # (B, V, D)
        return torch.cat([self.modality_embed[index][:, None], slots], dim=1) + self.position

    def forward(self, prompts: str | Sequence[str]) -> DiffusionCondition:
        """One prompt or ``B`` prompts -> ``DiffusionCondition(context=(B, 1 + V, embed_dim))``."""
        return DiffusionCondition(context=self.encode_labels(*self.labels_for(prompts)))

    def null_condition(self, condition: DiffusionCondition) -> DiffusionCondition:
        """The unconditional branch: the learned null context ``(L, D)`` for every batch element."""
        batch = condition.batch_size() or 1
        return DiffusionCondition(
            context=self.null_context.expand(batch, *self.null_context.shape),
            class_labels=condition.class_labels,
            concat=condition.concat,
        )

    @staticmethod
    def _as_list(prompts: str | Sequence[str]) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("expected at least one prompt, got an empty sequence.")
        return prompts

    def extra_repr(self) -> str:
        return f"modalities={list(self.modality_names)}, findings={list(self.findings)}, embed_dim={self.embed_dim}"


class PretrainedTextEncoder(nn.Module):
    """A local Hugging Face text encoder plus a trainable linear "textual projection" (RoentGen style).

    ``context = projection(last_hidden_state)`` of the prompts tokenised to exactly ``max_length`` tokens
    (padded / truncated), shape ``(B, max_length, embed_dim)``. The null condition is the encoding of the empty prompt
    ``""`` through the same projection, so it is consistent with the prompts and trains with them.

    Frozen (``freeze=True``, the default): the Hugging Face model is *not* a registered submodule, so it is not in
    ``state_dict()`` or ``parameters()`` (a checkpoint holds the projection only; the encoder's weights come from
    ``model_dir`` again at load time). It stays in eval mode, has ``requires_grad=False``, runs under
    ``torch.no_grad()``, follows ``.to(device)`` / ``.half()``, and its hidden states are cached per prompt string
    (training prompts repeat; at most ``cache_size`` entries, oldest evicted). With ``freeze=False`` (fine-tuning,
    RoentGen's best setting) it is the submodule ``encoder``: trained, saved, not cached.

    Args:
        model_dir: local Hugging Face model directory (with ``config.json``); nothing is downloaded.
        embed_dim: context width ``D`` (the U-Net's ``cross_attention_dim``).
        max_length: number of tokens ``L`` of every context.
        freeze: keep the encoder frozen (see above).
        projection: add ``Linear(hidden_size, embed_dim)``; if ``False``, ``embed_dim`` must equal the hidden size.
        tokenizer_dir: directory of the tokenizer when it is not ``model_dir`` (e.g. a Stable Diffusion
            ``tokenizer/`` next to ``text_encoder/``).
        cache_size: maximum number of cached prompts of a frozen encoder (0 disables the cache).

    Example::

        enc = PretrainedTextEncoder("/models/all-MiniLM-L6-v2", embed_dim=64)
        enc(["A chest X-ray image, edema"]).context   # (1, 32, 64)
    """

    def __init__(
        self,
        model_dir: str,
        embed_dim: int,
        max_length: int = 32,
        freeze: bool = True,
        projection: bool = True,
        tokenizer_dir: str | None = None,
        cache_size: int = 4096,
    ) -> None:
        super().__init__()
        model_dir = os.fspath(model_dir)
        tokenizer_dir = model_dir if tokenizer_dir is None else os.fspath(tokenizer_dir)
        for path in dict.fromkeys((model_dir, tokenizer_dir)):
            if not os.path.exists(path):
                raise FileNotFoundError(f"text encoder directory not found: {path!r}.")
            if not os.path.isdir(path):
                raise ValueError(f"{path!r} is a file, not a Hugging Face model directory.")
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise ValueError(
                f"{model_dir!r} is not a Hugging Face model directory: it has no config.json "
                "(save one with `model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`)."
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"`max_length` must be a positive integer, got {max_length!r}.")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"`cache_size` must be a non-negative integer, got {cache_size!r}.")
        try:
            import transformers
        except ImportError as e:
            raise ImportError(
                "PretrainedTextEncoder needs Hugging Face transformers: `pip install transformers` "
                "(or `pip install monai-pie[text]`)."
            ) from e

        # validate against the config before loading the weights, so that argument errors are cheap
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        hidden = getattr(config, "hidden_size", None)
        if hidden is None:
            raise ValueError(f"the model in {model_dir!r} has no `hidden_size` in its config; is it a text encoder?")
        self.hidden_size = int(hidden)
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"`embed_dim` must be a positive integer, got {embed_dim!r}.")
        self.embed_dim = int(embed_dim)
        if not projection and self.embed_dim != self.hidden_size:
            raise ValueError(
                f"with projection=False, `embed_dim` must equal the encoder's hidden size {self.hidden_size}, "
                f"got {self.embed_dim}."
            )
        self.model_dir = model_dir
        self.max_length = max_length
        self.freeze = bool(freeze)
        self.cache_size = cache_size if self.freeze else 0
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.projection: nn.Module = nn.Linear(self.hidden_size, self.embed_dim) if projection else nn.Identity()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        encoder = transformers.AutoModel.from_pretrained(model_dir, config=config, local_files_only=True)
        if self.freeze:
            encoder.eval()
            encoder.requires_grad_(False)
            self._frozen: tuple[nn.Module, ...] = (encoder,)  # a tuple is not registered: not in the state_dict
        else:
            self._frozen = ()
            self.encoder = encoder

    @property
    def text_model(self) -> nn.Module:
        """The Hugging Face encoder, frozen or not."""
        return self._frozen[0] if self._frozen else self.encoder

    # ---------------------------------------------------------------- module plumbing
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> PretrainedTextEncoder:
        """Also move / cast the unregistered frozen encoder, and drop the cache (it lives on the old device)."""
        super()._apply(fn, *args, **kwargs)
        if self._frozen:
            self._frozen[0]._apply(fn, *args, **kwargs)
        self._cache.clear()
        return self

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        if self._frozen:
            self._frozen[0].eval()
        return self

    def clear_cache(self) -> None:
        """Forget the cached hidden states of the frozen encoder."""
        self._cache.clear()

    # ---------------------------------------------------------------- encoding
    def _hidden_states(self, prompts: list[str]) -> torch.Tensor:
        """Encoder ``last_hidden_state`` ``(B, max_length, hidden_size)`` of ``prompts``."""
        model = self.text_model
        device = next(model.parameters()).device
        batch = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        if self.freeze:
            with torch.no_grad():
                return model(**batch).last_hidden_state
        return model(**batch).last_hidden_state

    def _cached_hidden_states(self, prompts: list[str]) -> torch.Tensor:
        if not self.freeze or self.cache_size == 0:
            return self._hidden_states(prompts)
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for p, h in zip(missing, self._hidden_states(missing)):
                self._cache[p] = h.detach()
        out = []
        for p in prompts:
            self._cache.move_to_end(p)
            out.append(self._cache[p])
        result = torch.stack(out)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def encode(self, prompts: str | Sequence[str], allow_empty: bool = False) -> torch.Tensor:
        """Prompts -> context ``(B, max_length, embed_dim)``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("expected at least one prompt, got an empty sequence.")
        for p in prompts:
            if not isinstance(p, str):
                raise TypeError(f"a prompt must be a string, got {type(p).__name__}.")
            if not allow_empty and not p.strip():
                raise ValueError(
                    "empty prompt; the empty prompt is the null condition (use `null_condition` or drop_mask), "
                    "give a text such as 'A chest X-ray image, edema'."
                )
        hidden = self._cached_hidden_states(prompts)
        weight = next(iter(self.projection.parameters()), None)
        return self.projection(hidden.to(weight.dtype) if weight is not None else hidden)

    def forward(self, prompts: str | Sequence[str]) -> DiffusionCondition:
        """One prompt or ``B`` prompts -> ``DiffusionCondition(context=(B, max_length, embed_dim))``."""
        return DiffusionCondition(context=self.encode(prompts))

    def null_condition(self, condition: DiffusionCondition) -> DiffusionCondition:
        """The unconditional branch: the encoding of ``""`` ``(1, max_length, D)`` expanded to the batch."""
        batch = condition.batch_size() or 1
        null = self.encode([""], allow_empty=True)
        return DiffusionCondition(
            context=null.expand(batch, *null.shape[1:]), class_labels=condition.class_labels, concat=condition.concat
        )

    def extra_repr(self) -> str:
        return (
            f"model_dir={self.model_dir!r}, hidden_size={self.hidden_size}, embed_dim={self.embed_dim}, "
            f"max_length={self.max_length}, freeze={self.freeze}"
        )
