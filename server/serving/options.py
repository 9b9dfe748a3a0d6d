"""From an OpenAI request to the engine's sampling options: defaults, limits and structured output."""

from __future__ import annotations

from adapters.settings import Settings
from server.engine import SamplingOptions
from server.errors import InvalidRequestError
from server.protocol import GenerationRequest, JsonObjectFormat, JsonSchemaFormat


def sampling_options(
    request: GenerationRequest, settings: Settings, *, max_tokens: int, logprobs: int | None
) -> SamplingOptions:
    """Validate what pydantic cannot (limits from settings) and fill OpenAI's defaults."""
    if request.n > settings.max_n:
        raise InvalidRequestError(f"'n' may be at most {settings.max_n} on this server.", param="n")
    temperature = 1.0 if request.temperature is None else request.temperature
    if request.n > 1 and temperature == 0:
        raise InvalidRequestError("'n' must be 1 with temperature 0: greedy choices would all be equal.", param="n")
    json_schema = None
    json_object = False
    if isinstance(request.response_format, JsonSchemaFormat):
        json_schema = request.response_format.json_schema.json_schema
    elif isinstance(request.response_format, JsonObjectFormat):
        json_object = True
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        n=request.n,
        stop=request.stop_sequences,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logprobs=logprobs,
        json_schema=json_schema,
        json_object=json_object,
        stream=request.stream,
        ignore_eos=request.ignore_eos,
        min_tokens=request.min_tokens,
    )
