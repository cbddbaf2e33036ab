"""parasearch: search spaces and ask/tell samplers that decide which parameters to try next."""

from parasearch.samplers import SAMPLERS, create_sampler
from parasearch.samplers.base import Sampler, SamplerError, SearchExhausted, Trial
from parasearch.space import Space, SpaceError

__all__ = [
    "SAMPLERS",
    "Sampler",
    "SamplerError",
    "SearchExhausted",
    "Space",
    "SpaceError",
    "Trial",
    "create_sampler",
]
