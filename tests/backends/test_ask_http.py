"""Yes/no answers (`ask`) over HTTP from `logprobs`, and where a server has none; vLLM's reading."""

import math
from types import SimpleNamespace

import pytest
from PIL import Image

from capmill.backends.base import AskingVisionLanguageModel, AskRequest
from capmill.backends.common import yes_probability
from capmill.backends.openai_http import OpenAIBackendConfig, first_token_logprobs
from capmill.backends.vllm import answer_from_logprobs
from capmill.testing.scripted_server import ScriptedServer

RULES = [{"when": "a dog", "answer": "Yes, there is a dog."}, {"when": "a unicorn", "answer": "No."},
         {"when": "the weather", "answer": "Maybe it rains."}]


def test_yes_probability_by_hand():
    assert yes_probability({"Yes": math.log(0.6), " yes": math.log(0.2), "No": math.log(0.1), "The": -1.0}) == \
        pytest.approx(0.8 / 0.9)
    assert yes_probability({"no": 0.0}) == 0.0
    assert yes_probability({"Maybe": -0.1}) is None and yes_probability({}) is None


def test_first_token_logprobs_of_a_chat_completion():
    payload = {"choices": [
        {"message": {"content": "Yes"}, "logprobs": {"content": [
            {"token": "Yes", "logprob": -0.2, "top_logprobs": [{"token": "Yes", "logprob": -0.2}, {"token": "No", "logprob": -1.9}]}]}},
        {"message": {"content": "No"}, "logprobs": None},
        {"message": {"content": "No"}}]}
    assert first_token_logprobs(payload) == [{"Yes": -0.2, "No": -1.9}, None, None]
    assert first_token_logprobs("nonsense") == [] and first_token_logprobs({"choices": "x"}) == []


def _ask(server, **config):
    backend = OpenAIBackendConfig(base_url=server.base_url, model=server.model, **config).build()
    assert isinstance(backend, AskingVisionLanguageModel)
    backend.load()
    image = Image.new("RGB", (32, 24), "red")
    try:
        return backend.ask([AskRequest(image, "Is there a dog?"), AskRequest(image, "Is there a unicorn?"),
                            AskRequest(image, "How is the weather?")])
    finally:
        backend.close()


def test_ask_reads_the_servers_logprobs():
    with ScriptedServer(RULES) as server:
        dog, unicorn, weather = _ask(server)
        bodies = list(server.bodies)
    assert dog.source == "logprobs" and dog.p_yes == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.4)))
    assert unicorn.p_yes == pytest.approx(1 - dog.p_yes)
    assert not weather.ok and "neither yes nor no" in weather.error
    for body in bodies:  # one greedy token with its log-probabilities, the image inline
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        assert body["temperature"] == 0.0
        assert body["messages"][-1]["content"][0]["type"] == "image_url"


def test_servers_without_logprobs_answer_from_the_word_or_fail_as_configured():
    with ScriptedServer(RULES, logprobs=False) as server:
        dog, unicorn, weather = _ask(server)
        assert (dog.p_yes, dog.source, unicorn.p_yes, unicorn.source) == (1.0, "text", 0.0, "text")
        assert not weather.ok
        strict = _ask(server, ask_without_logprobs="error")
    assert all(not a.ok and "no log-probabilities" in a.error for a in strict)


def test_vllm_answer_from_its_logprobs():
    entry = lambda token, lp: SimpleNamespace(decoded_token=token, logprob=lp)  # noqa: E731
    answer = answer_from_logprobs([{1: entry("Yes", math.log(0.3)), 2: entry("No", math.log(0.1)), 3: entry("A", -0.5)}])
    assert answer.ok and answer.p_yes == pytest.approx(0.75) and answer.source == "logprobs"
    assert not answer_from_logprobs([{3: entry("A", -0.5)}]).ok
    assert not answer_from_logprobs(None).ok
