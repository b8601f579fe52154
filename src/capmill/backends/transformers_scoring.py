"""Teacher-forced token logits and yes/no answers of a transformers vision-language model.

`ScoringMixin` gives `TransformersBackend` the two methods the verifying stages need besides
generation: `forced_logits` (ScaleCap's contrastive rating: a given text's token logits with and
without the image) and `ask` (Visual Fact Checker's and FuseCap's yes/no questions: P("yes") from
the first answer token's logits). Both run one batched forward pass per chunk of `batch_size`,
with no sampling, on the backend's own prompt rendering and image preprocessing.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from capmill.backends.base import Answer, AskRequest, ForcedRequest, TokenLogits, VLMRequest
from capmill.backends.shared_images import SHARED_IMAGES
from capmill.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("capmill.backends.transformers")



class ScoringMixin:
    """`forced_logits`, `token_logits` and `ask` for TransformersBackend (which provides
    `model`, `tokenizer`, `_vlm_inputs`, `_to_device`, `neutralise`, `_require_loaded`)."""

    # --- forced-continuation logits and yes/no answers ----------------------------------------

    def _require_chat_vlm(self, what: str) -> None:
        self._require_loaded()
        if not self.vision or self.chat_template is None:
            raise ConfigError(f"{what} needs a chat vision-language model; {self.model_id!r} is not one")

    def token_logits(self, image: Image.Image | None, prompt: str, continuation: str) -> TokenLogits:
        """`forced_logits` of one request (ScaleCap, Xing et al. 2025)."""
        return self.forced_logits([ForcedRequest(image=image, prompt=prompt, continuation=continuation)])[0]

    def forced_logits(self, requests: list[ForcedRequest]) -> list[TokenLogits]:
        """Raw logit of each token of each request's `continuation` after its `prompt`, with the
        image and without it (ScaleCap, Xing et al. 2025: a token whose logit barely drops without
        the image is a language-prior guess rather than something seen). A request without an
        image gets the text-only logits in both lists. Two batched forward passes per chunk of
        `batch_size` (one with images, one without), no generation."""
        self._require_chat_vlm("forced_logits")
        ids = [self.tokenizer(self.neutralise(r.continuation), add_special_tokens=False)["input_ids"] for r in requests]
        scored = [i for i, cont in enumerate(ids) if cont]
        without = self._forced_rows([VLMRequest(prompt=requests[i].prompt, tag=requests[i].tag) for i in scored],
                                    [ids[i] for i in scored])
        seen = [i for i in scored if requests[i].image is not None]
        with_image = self._forced_rows([VLMRequest(prompt=requests[i].prompt, images=[requests[i].image], tag=requests[i].tag)
                                        for i in seen], [ids[i] for i in seen])
        by_index = dict(zip(scored, without, strict=True))
        seen_by_index = dict(zip(seen, with_image, strict=True))
        out = []
        for i, cont in enumerate(ids):
            if not cont:
                out.append(TokenLogits(tokens=[], token_ids=[], with_image=[], without_image=[]))
                continue
            plain, looked = by_index[i], seen_by_index.get(i, by_index[i])
            error = plain if isinstance(plain, str) else looked if isinstance(looked, str) else None
            if error is not None:
                out.append(TokenLogits(tokens=[], token_ids=[], with_image=[], without_image=[], error=error))
                continue
            out.append(TokenLogits(tokens=[self.tokenizer.decode([t]) for t in cont], token_ids=list(cont),
                                   with_image=looked, without_image=plain))
        return out

    def _forced_rows(self, requests: list[VLMRequest], continuations: list[list[int]]) -> list[list[float] | str]:
        """Per request, the logits of its continuation's tokens, or the error text of a request
        that failed (a failing chunk is retried request by request, as generation is)."""
        out: list[list[float] | str] = [""] * len(requests)
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            self._forced_chunk(requests, continuations, list(range(start, min(start + size, len(requests)))), out)
        return out

    def _forced_chunk(self, requests, continuations, chunk, out) -> None:
        try:
            rows = self._forced([requests[i] for i in chunk], [continuations[i] for i in chunk])
            for i, row in zip(chunk, rows, strict=True):
                out[i] = row
        except (ValueError, RuntimeError, TypeError, IndexError) as e:
            if len(chunk) > 1:
                for i in chunk:
                    self._forced_chunk(requests, continuations, [i], out)
            else:
                log.warning("%s: forced logits of %r failed: %s", self.model_id, requests[chunk[0]].tag, e)
                out[chunk[0]] = f"{type(e).__name__}: {e}"

    def _forced(self, requests: list[VLMRequest], continuations: list[list[int]]) -> list[list[float]]:
        """One forward pass over `requests`' prompts, each followed by its continuation, rows
        left-padded to one length; the logit at position t scores the token at t + 1."""
        import torch

        inputs = dict(self._vlm_inputs(requests))
        inputs.pop(SHARED_IMAGES, None)
        mask = inputs["attention_mask"].bool()
        batch, length = inputs["input_ids"].shape
        totals = [int(mask[b].sum()) + len(continuations[b]) for b in range(batch)]
        width = max(totals)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Every per-token tensor (ids, attention, token-type masks) gets each row's real prompt
        # tokens, then its continuation (ids; ones for attention; zeros for type masks: text), then
        # left padding.
        for key, value in list(inputs.items()):
            if not (isinstance(value, torch.Tensor) and value.dim() == 2 and tuple(value.shape) == (batch, length)):
                continue
            rows = []
            for b in range(batch):
                tail = torch.tensor(continuations[b], dtype=value.dtype)
                fill = tail if key == "input_ids" else torch.ones_like(tail) if key == "attention_mask" else torch.zeros_like(tail)
                row = torch.cat([value[b][mask[b]], fill])
                pad_value = pad_id if key == "input_ids" else 0
                rows.append(torch.cat([torch.full((width - len(row),), pad_value, dtype=value.dtype), row]))
            inputs[key] = torch.stack(rows)
        if self._takes_position_ids():
            # Positions count real tokens only, so a left-padded row is scored as it would be alone.
            inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        inputs = self._to_device(inputs)
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        out = []
        for b in range(batch):
            k = len(continuations[b])
            rows = logits[b, width - k - 1:width - 1].float()
            picked = rows.gather(1, torch.tensor(continuations[b], device=rows.device)[:, None])[:, 0]
            out.append(picked.cpu().tolist())
        return out

    def _takes_position_ids(self) -> bool:
        """Whether explicit 1-D position ids are right for this model: not for models that derive
        multi-axis (M-RoPE) positions themselves (Qwen2-VL and its successors)."""
        if getattr(self.model.base_model, "get_rope_index", None) is not None:
            return False
        return "position_ids" in inspect.signature(self.model.forward).parameters

    def ask(self, requests: list[AskRequest]) -> list[Answer]:
        """P("yes") for each yes/no question: one forward pass per chunk, no sampling; the answer's
        first-token distribution is read at the end of the prompt and the probabilities of the
        "yes" spellings are weighed against those of "no" (softmax over the two sums)."""
        import torch

        self._require_chat_vlm("ask")
        yes_ids, no_ids = answer_ids(self.tokenizer)
        if not yes_ids or not no_ids:
            raise ConfigError(f"model {self.model_id!r}: its tokenizer has no distinct first tokens for yes and no")
        vlm = [VLMRequest(prompt=r.question, images=[r.image], tag=r.tag) for r in requests]
        out: list[Answer | None] = [None] * len(requests)

        def run(chunk: list[int]) -> None:
            try:
                inputs = dict(self._vlm_inputs([vlm[i] for i in chunk]))
                inputs.pop(SHARED_IMAGES, None)
                if self._takes_position_ids():
                    inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
                inputs = self._to_device(inputs)
                with torch.inference_mode():
                    last = self.model(**inputs).logits[:, -1, :].float()
                logp = torch.log_softmax(last, dim=-1)
                yes = torch.logsumexp(logp[:, yes_ids], dim=-1)
                no = torch.logsumexp(logp[:, no_ids], dim=-1)
                p_yes = torch.sigmoid(yes - no).cpu().tolist()
                mass = (yes.exp() + no.exp()).cpu().tolist()
                for i, p, m in zip(chunk, p_yes, mass, strict=True):
                    # `answer_mass`: how much of the first token's probability went to yes or no at all.
                    out[i] = Answer(p_yes=float(p), source="logits", meta={"answer_mass": round(float(m), 4)})
            except (ValueError, RuntimeError, TypeError, IndexError) as e:
                if len(chunk) > 1:
                    for i in chunk:
                        run([i])
                else:
                    out[chunk[0]] = Answer(p_yes=None, error=f"{type(e).__name__}: {e}")

        size = self.config.batch_size
        for start in range(0, len(requests), size):
            run(list(range(start, min(start + size, len(requests)))))
        return out  # type: ignore[return-value]


# Spellings whose first token counts as the answer (with and without a leading space, as chat
# templates end their generation prompt either way).
YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes")
NO_SPELLINGS = ("no", "No", "NO", " no", " No")


def answer_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First-token ids of the yes and of the no spellings, without those both share (a lone
    leading-space token, in vocabularies that split " yes" into " " + "yes")."""
    yes, no = answer_token_ids(tokenizer, YES_SPELLINGS), answer_token_ids(tokenizer, NO_SPELLINGS)
    shared = set(yes) & set(no)
    return [i for i in yes if i not in shared], [i for i in no if i not in shared]


def answer_token_ids(tokenizer: Any, spellings: tuple[str, ...]) -> list[int]:
    """The distinct first token ids of `spellings` (a word split into pieces counts by its first)."""
    found = []
    for word in spellings:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if ids and ids[0] not in found:
            found.append(ids[0])
    return found
