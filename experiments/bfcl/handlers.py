"""The two bfcl-eval handlers we register: `api` (bfcl's chat-completions handler) and `native`
(bfcl's OSSHandler with the leaderboard's Qwen2.5 FC prompt and decoder, experiments.bfcl.qwen25_fc).
Both send the run's per-request sampling parameters (BFCL_SAMPLING) with every request.

Imports bfcl-eval at module level (its `@override` checks resolve base classes from module
globals): import this module only in the bfcl worker process, after BFCL_PROJECT_ROOT is set.
"""
from __future__ import annotations

import os

import openai
from bfcl_eval.model_handler.api_inference.openai_completion import OpenAICompletionsHandler
from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler
from bfcl_eval.model_handler.utils import convert_to_function_call
from openai import OpenAI
from overrides import override

from experiments.bfcl import qwen25_fc

BREAKER = None  # experiments.bfcl.worker.Breaker, set by the worker before bfcl builds a handler


def guarded(call):
    """call() behind the worker's breaker: refused at once when the server is gone; a
    connection error (the client's retries spent) makes the breaker probe the server."""
    if BREAKER is not None:
        BREAKER.check()
    try:
        return call()
    except openai.APIConnectionError as exc:  # refused, dropped, timed out
        if BREAKER is not None:
            BREAKER.connection_failed(exc)
        raise


class LocalChatHandler(OpenAICompletionsHandler):
    """bfcl's chat-completions handler (tools, OPENAI_BASE_URL/OPENAI_API_KEY), with the OpenAI
    client's retry budget and timeout set by us. The client retries connection errors,
    408/409/429 and 5xx with exponential backoff; bfcl itself only adds a retry on 429
    (RateLimitError), and records any other failure as the item's answer. The worker's breaker
    stands in front of every request."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        qwen25_fc.add_extra_body(self.client.chat.completions, qwen25_fc.sampling_from_env())

    def _build_client_kwargs(self):
        kwargs = super()._build_client_kwargs()
        kwargs["max_retries"] = int(os.environ.get("BFCL_MAX_RETRIES", "5"))
        kwargs["timeout"] = float(os.environ.get("BFCL_REQUEST_TIMEOUT_S", "600"))
        return kwargs

    def generate_with_backoff(self, **kwargs):
        return guarded(lambda: super(LocalChatHandler, self).generate_with_backoff(**kwargs))


class Qwen25FCHandler(OSSHandler):
    """Port of gorilla f810631's QwenFCHandler (see experiments.bfcl.qwen25_fc for what and why).
    Requests go to REMOTE_OPENAI_BASE_URL with the served model name; the tokenizer and the
    context length come from REMOTE_OPENAI_TOKENIZER_PATH (bfcl's own spin_up_local_server)."""

    def __init__(self, model_name, temperature, registry_name, is_fc_model, **kwargs) -> None:
        super().__init__(model_name, temperature, registry_name, is_fc_model, **kwargs)
        self.model_name_huggingface = model_name  # the served name: the request's `model`
        self.client = OpenAI(base_url=self.base_url, api_key=self.api_key,
                             max_retries=int(os.environ.get("BFCL_MAX_RETRIES", "5")))
        qwen25_fc.add_extra_body(self.client.completions, qwen25_fc.sampling_from_env())

    @override
    def _query_prompting(self, inference_data: dict):
        return guarded(lambda: super(Qwen25FCHandler, self)._query_prompting(inference_data))

    @override
    def decode_ast(self, result, language, has_tool_call_tag):
        return qwen25_fc.decode_calls(result)

    @override
    def decode_execute(self, result, has_tool_call_tag):
        return convert_to_function_call(qwen25_fc.decode_calls(result))

    @override
    def _format_prompt(self, messages, function):
        return qwen25_fc.format_prompt(messages, function)

    @override
    def _pre_query_processing_prompting(self, test_entry: dict) -> dict:
        return {"message": [], "function": test_entry["function"]}  # FC: no system prompt added

    @override
    def _parse_query_response_prompting(self, api_response) -> dict:
        text = api_response.choices[0].text
        return {"model_responses": text,
                "model_responses_message_for_chat_history": qwen25_fc.chat_history_message(text),
                "input_token": api_response.usage.prompt_tokens,
                "output_token": api_response.usage.completion_tokens}

    @override
    def _add_assistant_message_prompting(self, inference_data: dict, model_response_data: dict) -> dict:
        inference_data["message"].append(model_response_data["model_responses_message_for_chat_history"])
        return inference_data
