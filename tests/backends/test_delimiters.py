"""No forged delimiter survives into the prompt a model finally reads, for every template with
an untrusted slot and every backend that runs here: transformers (the rendered chat template of
tiny models of each family), vLLM (the conversations handed to `LLM.chat`, built without the
engine) and the OpenAI-compatible backend (the request bodies a scripted server received)."""

import pytest
from PIL import Image

from capmill import registry
from capmill.backends.base import ChatRequest, GenerationParams, VLMRequest
from capmill.backends.vllm import VLLMBackendConfig
from capmill.prompts import load_template
from capmill.prompts.safety import delimited
from capmill.stages.base import RunContext
from capmill.stages.caption import CaptionStageConfig
from capmill.stages.fuse import FuseStageConfig
from capmill.testing.hostile import hostile_alt_texts
from tests.stages.test_injection import CAPTION, check_prompt, obeying

CORPUS = hostile_alt_texts()
FUSE_TEMPLATES = ["capsfusion", "veclip"]
# Built-in caption formats that show the AltText to the model.
CAPTION_FORMATS = ["custom"]
# Special tokens of common families, as a model's tokenizer would list them.
MODEL_TOKENS = ["<|im_start|>", "<|im_end|>", "<image>", "<|image_pad|>", "<end_of_utterance>", "</s>", "<s>",
                "<|eot_id|>", "[INST]", "[/INST]"]


def test_every_template_with_untrusted_slots_is_covered():
    from capmill.prompts.templates import builtin_names

    with_alt = [n for n in builtin_names("formats") if "alt_text" in load_template("formats", n).slots()]
    assert with_alt == CAPTION_FORMATS
    # fusecap is filled by the fusecap stage (caption, facts, OCR text, AltText): its delimiting is
    # tested in tests/stages/test_verify_injection.py
    assert builtin_names("fuse") == sorted(FUSE_TEMPLATES + ["fusecap"])


def caption_requests(fmt="custom"):
    template = load_template("formats", fmt)
    image = Image.new("RGB", (40, 40))
    return [VLMRequest(prompt=template.render(alt_text=delimited(h.text), word_count=40), images=[image],
                       system=template.render_system(alt_text=delimited(h.text), word_count=40), tag=h.id)
            for h in CORPUS]


def fuse_requests(template):
    stage = FuseStageConfig(backend={"type": "fake"}, template=template).build()
    return [ChatRequest(messages=stage.messages(h.text, CAPTION), tag=h.id) for h in CORPUS]


# ---- vLLM: what LLM.chat receives ------------------------------------------------------------


def _vllm():
    backend = VLLMBackendConfig(model="unused").build()
    backend.special_tokens = MODEL_TOKENS  # as load() reads them from the model's tokenizer
    return backend


def test_vllm_conversations_keep_the_real_delimiters():
    backend = _vllm()
    for conversation in backend.vlm_conversations(caption_requests()):
        [text] = [part["text"] for part in conversation[-1]["content"] if part["type"] == "text"]
        check_prompt(text, {"alt_text": 1})
    for template in FUSE_TEMPLATES:
        for conversation in backend.chat_conversations(fuse_requests(template)):
            check_prompt(conversation[-1]["content"], {"alt_text": 1, "caption": 1})


# ---- transformers: the rendered chat template of tiny models -----------------------------------

needs_transformers = pytest.mark.skipif("transformers" not in registry.available(registry.BACKENDS),
                                        reason="needs the transformers backend (pip install 'capmill[transformers]')")


def _load(tiny_models, family):
    from capmill.backends.transformers import TransformersConfig

    backend = TransformersConfig(model=str(tiny_models / family), params=GenerationParams(max_new_tokens=4)).build()
    backend.load()
    return backend


@needs_transformers
@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "idefics3"])
def test_transformers_vlm_prompts_keep_the_real_delimiters(tiny_models, family):
    backend = _load(tiny_models, family)
    for request in caption_requests():
        check_prompt(backend.render(request), {"alt_text": 1}, rendered=True)


@needs_transformers
@pytest.mark.parametrize("family", ["qwen2_lm", "llama_lm"])
def test_transformers_chat_prompts_keep_the_real_delimiters(tiny_models, family):
    backend = _load(tiny_models, family)
    for template in FUSE_TEMPLATES:
        for request in fuse_requests(template):
            check_prompt(backend.render_chat(request), {"alt_text": 1, "caption": 1}, rendered=True)


@needs_transformers
def test_caption_and_fuse_stages_on_tiny_models_send_clean_prompts(tiny_models):
    """The stage → backend path as a run takes it: every prompt the model's tokenizer received."""
    samples = []
    from capmill.sample import Caption, Sample

    for h in CORPUS[::7]:
        s = Sample(key=h.id, alt_text=h.text, captions={"dsc": Caption(text=CAPTION, source="dsc")})
        s.image.image = Image.new("RGB", (40, 40))
        samples.append(s)
    caption = CaptionStageConfig(backend={"type": "transformers", "model": str(tiny_models / "qwen2_vl"),
                                          "params": {"max_new_tokens": 4}}, formats=["custom"]).build()
    fuse = FuseStageConfig(backend={"type": "transformers", "model": str(tiny_models / "qwen2_lm")},
                           params={"max_new_tokens": 4, "num_beams": 1}).build()
    seen = []
    for stage in (caption, fuse):
        stage.setup(RunContext())
        backend = stage.backend
        for name in ("render", "render_chat"):
            inner = getattr(backend, name)
            setattr(backend, name, lambda r, inner=inner: seen.append(inner(r)) or seen[-1])
        stage.process([s for s in samples if s.ok])
        stage.teardown()
    assert len(seen) >= 2 * len(samples)
    for prompt in seen:
        check_prompt(prompt, {"alt_text": 1, **({"caption": 1} if "<caption>" in prompt else {})}, rendered=True)


# ---- OpenAI-compatible HTTP: what the server received ------------------------------------------


@pytest.mark.slow
def test_openai_backend_against_a_scripted_obeying_server(tmp_path):
    """Every prompt the server received is clean, every obeyed answer is caught (and asked for
    again once, in the same batch), and a server's finish_reason "length" counts as truncation."""
    pytest.importorskip("aiohttp")
    from capmill.sample import Caption, Sample
    from capmill.testing.scripted_server import ScriptedServer

    cut = {"when": "Write one short sentence", "answer": "A dog sits on a bench. It looks at the",
           "finish_reason": "length"}
    with ScriptedServer([*obeying(), cut]) as server:
        backend = {"type": "openai", "base_url": server.base_url, "model": server.model, "concurrency": 16,
                   "special_tokens": MODEL_TOKENS}
        caption = CaptionStageConfig(backend=backend, formats=["custom", "ssc"]).build()
        # A server keeps its tokenizer: the budget counts the inputs in CLIP tokens here.
        fuse = FuseStageConfig(backend=backend, template="veclip", caption="dsc", budget_scope="inputs",
                               budget_tokenizer="clip").build()
        caption.setup(RunContext())
        fuse.setup(RunContext())
        samples = []
        for h in CORPUS:
            s = Sample(key=h.id, alt_text=h.text, captions={"dsc": Caption(text=CAPTION, source="dsc")})
            s.image.image = Image.new("RGB", (16, 16))
            samples.append(s)
        fuse.process(samples)  # before the caption stage drops the hostile samples
        caption.process(samples)
        caption.teardown()
        fuse.teardown()
        bodies = list(server.bodies)
    users = [b["messages"][-1]["content"] for b in bodies]
    texts = [u if isinstance(u, str) else "\n".join(p["text"] for p in u if p["type"] == "text") for u in users]
    with_alt = [t for t in texts if "<alt_text>" in t]
    # veclip: 70 + 70 regenerated; custom: 70 + 70 regenerated
    assert len(with_alt) == 4 * len(CORPUS)
    for text in with_alt:
        check_prompt(text, {"alt_text": 1, **({"caption": 1} if "<caption>" in text else {})})
    for hostile, sample in zip(CORPUS, samples, strict=True):
        assert sample.captions["veclip"].meta["fallback"], hostile.id
        assert sample.captions["veclip"].text == CAPTION
        assert sample.status == "dropped" and sample.captions["custom"].meta["guards"]["outcome"] == "dropped"
        ssc = sample.captions["ssc"]  # cut off by the server, asked again, then cut at its last sentence
        assert ssc.text == "A dog sits on a bench." and ssc.meta["guards"]["outcome"] == "repaired", hostile.id
        assert ssc.meta["guards"]["rejected"][0]["details"]["truncated"] == "stopped at the token limit mid-sentence"
